"""Training objective (paper eq. 5) and prompt dropout for classifier-free guidance."""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class MaskedLoss(NamedTuple):
    """Cross-entropy over masked positions (differentiable) and their top-1 accuracy (detached)."""

    loss: Tensor
    accuracy: Tensor


def masked_cross_entropy(
    logits: Tensor, targets: Tensor, masked: Tensor, label_smoothing: float = 0.0
) -> MaskedLoss:
    """Mean cross-entropy over positions where `masked` is True; other positions do not count.

    logits float (B, N, h, w, K), targets int64 (B, N, h, w) in [0, K), masked bool (B, N, h, w).
    """
    if logits.shape[:-1] != targets.shape or masked.shape != targets.shape:
        raise ValueError(
            f"expected logits (*S, K), targets S and masked S; got logits {tuple(logits.shape)}, "
            f"targets {tuple(targets.shape)}, masked {tuple(masked.shape)}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if masked.dtype != torch.bool:
        raise ValueError(f"masked must be bool, got {masked.dtype}")
    selected_logits = logits[masked]
    if selected_logits.shape[0] == 0:
        raise ValueError("masked selects no position: there is nothing to predict")
    selected_targets = targets[masked]
    loss = F.cross_entropy(selected_logits, selected_targets, label_smoothing=label_smoothing)
    accuracy = (selected_logits.detach().argmax(dim=-1) == selected_targets).float().mean()
    return MaskedLoss(loss, accuracy)


def prompt_dropout(
    batch_size: int,
    p: float = 0.1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """bool (B,): True for the samples whose prompt is replaced by the null prompt (probability p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"prompt dropout probability must be in [0, 1], got {p}")
    return torch.rand(batch_size, generator=generator, device=device) < p
