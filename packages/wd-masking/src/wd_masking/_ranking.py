"""Vectorised "pick the k lowest scores of each row", shared by masks and the sampler."""

import torch
from torch import Tensor


def lowest_k_mask(scores: Tensor, counts: Tensor) -> Tensor:
    """bool (B, L): True at the counts[b] lowest scores of row b; scores (B, L), counts int (B,)."""
    order = scores.argsort(dim=1, stable=True)
    chosen = torch.arange(scores.shape[1], device=scores.device) < counts[:, None]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, chosen)
