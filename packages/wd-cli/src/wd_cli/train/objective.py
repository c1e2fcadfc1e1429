"""The STPT objective (paper eq. 2-5): cross-entropy on masked tokens, with 10% prompt dropout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from wd_masking import MaskMixture, apply_mask, masked_cross_entropy, prompt_dropout, sample_training_mask
from wd_stpt import STPTCondition

from wd_cli.train.config import LossSection
from wd_cli.train.configfile import ConfigError
from wd_cli.train.data import TokenBatch


def mask_mixture(section: LossSection) -> MaskMixture:
    try:
        return MaskMixture(shared=section.mask_shared, prefix=section.mask_prefix, box=section.mask_box,
                           schedule=section.mask_schedule)
    except ValueError as error:
        raise ConfigError(f"loss: {error}") from None


@dataclass
class MaskedTokenObjective:
    """Masks and prompt dropout are drawn for the global micro-batch from one generator and each rank takes its
    rows, and the loss is this rank's share of the mean over all masked tokens of all ranks, so that DDP's
    gradient average equals one process's gradient on the global batch."""

    section: LossSection
    mask_id: int  # the codebook size

    def __post_init__(self) -> None:
        self.mixture = mask_mixture(self.section)

    def __call__(self, model: nn.Module, batch: TokenBatch, generator: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (loss to back-propagate, masked-token accuracy of this rank)."""
        local, frames, height, width = batch.tokens.shape
        masked = sample_training_mask(local * world_size, frames, height, width, self.mixture, generator=generator)
        drop = prompt_dropout(local * world_size, self.section.prompt_dropout, generator=generator)
        rows = slice(rank * local, (rank + 1) * local)
        total = masked.sum()
        masked, drop = masked[rows].to(batch.tokens.device), drop[rows].to(batch.tokens.device)
        cond = STPTCondition(text=batch.text, text_mask=batch.text_mask, actions=batch.actions,
                             is_image=batch.is_image, drop_prompt=drop)
        logits = model(apply_mask(batch.tokens, masked, self.mask_id), cond)
        result = masked_cross_entropy(logits.float(), batch.tokens, masked, self.section.label_smoothing)
        return result.loss * (masked.sum() * world_size / total), result.accuracy
