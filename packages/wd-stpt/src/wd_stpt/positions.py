"""Learned per-axis (time, row, column) position embeddings: time rows are cut, rows and columns interpolate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TIME_TABLE = "positions.time"  # the time table's name in an STPT state dict


def _resize(table: torch.Tensor, size: int) -> torch.Tensor:
    """(L, C) -> (size, C), linear interpolation over the axis; identity when L == size."""
    if table.shape[0] == size:
        return table
    resized = F.interpolate(table.t()[None], size=size, mode="linear", align_corners=True)
    return resized[0].t()


def time_rows(table: torch.Tensor, frames: int) -> torch.Tensor:
    """(L, C) -> (frames, C): the table's first `frames` rows, cut; a clip longer than the table stretches it."""
    return table[:frames] if frames <= table.shape[0] else _resize(table, frames)


def fit_time_table(state: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """An STPT state dict whose time table has `frames` rows: cut, or grown by repeating its last row (the start
    of fine-tuning at a longer clip, whose new rows then learn their own positions). Other tensors unchanged."""
    if TIME_TABLE not in state or state[TIME_TABLE].shape[0] == frames:
        return state
    table = state[TIME_TABLE]
    index = torch.arange(frames, device=table.device).clamp(max=table.shape[0] - 1)
    return {**state, TIME_TABLE: table[index].clone()}


class FactorizedPositions(nn.Module):
    """Sum of a time, a row and a column embedding.

    A clip of k frames reads time rows 0..k-1, the rows its frames had in every training clip (a clip is a
    window cut anywhere from a video, so its first frame is time 0 wherever it sits in the video). Only a clip
    longer than the table stretches it, which measured better than holding the last row or extrapolating; to
    train at a longer clip, grow the table (`fit_time_table`) and let the new rows learn (docs/design.md). The
    row and column tables are interpolated to other grids, so a model trained at 16x16 tokens runs at 12x20.
    """

    def __init__(self, channels: int, frames: int, height: int, width: int) -> None:
        super().__init__()
        self.time = nn.Parameter(torch.randn(frames, channels) * 0.02)
        self.row = nn.Parameter(torch.randn(height, channels) * 0.02)
        self.col = nn.Parameter(torch.randn(width, channels) * 0.02)

    def forward(self, frames: int, height: int, width: int) -> torch.Tensor:
        """-> (N, h, w, C) position embeddings for a clip of N frames of h x w tokens."""
        time = time_rows(self.time, frames)[:, None, None]
        row = _resize(self.row, height)[None, :, None]
        col = _resize(self.col, width)[None, None, :]
        return time + row + col
