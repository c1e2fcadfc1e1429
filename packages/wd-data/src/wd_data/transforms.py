"""Resize-then-crop geometry shared by the video and image readers."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Crop = Literal["center", "random"]


def normalize_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Turn an int (square) or an (H, W) pair into an (H, W) pair; None stays None (native size)."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size) if isinstance(size, tuple | list) else ()
    if len(pair) != 2 or not all(isinstance(side, int | np.integer) and side > 0 for side in pair):
        raise ValueError(f"size must be a positive int or an (H, W) pair of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def resized_shape(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after scaling the source so that it just covers the target (short side matches, aspect kept)."""
    source_h, source_w = source_hw
    target_h, target_w = target_hw
    scale = max(target_h / source_h, target_w / source_w)
    # max() keeps rounding from ever leaving the resized frame smaller than the crop.
    return max(target_h, round(source_h * scale)), max(target_w, round(source_w * scale))


def crop_offset(
    resized_hw: tuple[int, int],
    target_hw: tuple[int, int],
    crop: Crop,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Top-left (y, x) of the target window inside the resized frame: centred, or uniform at random."""
    spare_h, spare_w = resized_hw[0] - target_hw[0], resized_hw[1] - target_hw[1]
    if crop == "center":
        return spare_h // 2, spare_w // 2
    if crop == "random":
        y = int(torch.randint(spare_h + 1, (1,), generator=generator))
        x = int(torch.randint(spare_w + 1, (1,), generator=generator))
        return y, x
    raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
