"""Mask schedules: progress ratio in [0, 1] -> fraction of tokens still masked.

Every schedule maps 0 to 1 (all masked) and 1 to 0 (none masked). Training draws the ratio
uniformly; the sampler evaluates it at (t + 1) / T after step t.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

Schedule = Callable[[Tensor], Tensor]


def cosine_schedule(ratio: Tensor) -> Tensor:
    """cos(pi/2 * r): MaskGIT's default, masks 2/pi of the tokens on average."""
    return torch.cos(ratio * (math.pi / 2))


def linear_schedule(ratio: Tensor) -> Tensor:
    """1 - r."""
    return 1 - ratio


def square_schedule(ratio: Tensor) -> Tensor:
    """1 - r^2."""
    return 1 - ratio**2


def cube_schedule(ratio: Tensor) -> Tensor:
    """1 - r^3."""
    return 1 - ratio**3


SCHEDULES: dict[str, Schedule] = {
    "cosine": cosine_schedule,
    "linear": linear_schedule,
    "square": square_schedule,
    "cube": cube_schedule,
}


def get_schedule(name: str) -> Schedule:
    """The schedule registered under `name` (one of SCHEDULES)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]
