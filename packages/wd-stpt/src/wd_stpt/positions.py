"""Learned per-axis (time, row, column) position embeddings that interpolate to any grid size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _resize(table: torch.Tensor, size: int) -> torch.Tensor:
    """(L, C) -> (size, C), linear interpolation over the axis; identity when L == size."""
    if table.shape[0] == size:
        return table
    resized = F.interpolate(table.t()[None], size=size, mode="linear", align_corners=True)
    return resized[0].t()


class FactorizedPositions(nn.Module):
    """Sum of a time, a row and a column embedding; tables are learned at one grid size and stretched
    to others, so a model trained at 16x16x16 tokens runs at 24x12x20."""

    def __init__(self, channels: int, frames: int, height: int, width: int) -> None:
        super().__init__()
        self.time = nn.Parameter(torch.randn(frames, channels) * 0.02)
        self.row = nn.Parameter(torch.randn(height, channels) * 0.02)
        self.col = nn.Parameter(torch.randn(width, channels) * 0.02)

    def forward(self, frames: int, height: int, width: int) -> torch.Tensor:
        """-> (N, h, w, C) position embeddings for a grid of N x h x w tokens."""
        time = _resize(self.time, frames)[:, None, None]
        row = _resize(self.row, height)[None, :, None]
        col = _resize(self.col, width)[None, None, :]
        return time + row + col
