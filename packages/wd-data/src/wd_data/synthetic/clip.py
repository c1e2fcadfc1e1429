"""What every synthetic world returns, the seed convention, and a torch Dataset over seeds.

Seeds split train from held-out evaluation: train on `TRAIN_SEEDS` = [0, 10^6), evaluate on
`eval_seeds(n)` = [10^9, 10^9 + n), so no evaluation clip is ever seen in training.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

TRAIN_SEEDS = range(0, 10**6)
EVAL_SEED_START = 10**9


def eval_seeds(count: int) -> range:
    """The first `count` held-out evaluation seeds, disjoint from TRAIN_SEEDS."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return range(EVAL_SEED_START, EVAL_SEED_START + count)


@dataclass
class Clip:
    """One rendered clip: frames uint8 (N, H, W, 3), caption, per-frame ground truth, actions (N, 2) or None."""

    frames: np.ndarray
    caption: str
    state: dict[str, np.ndarray]
    actions: np.ndarray | None
    seed: int

    def to_sample(self, world: str) -> dict[str, Any]:
        """The dataset sample dict of the data contract (torch frames/actions, meta with seed and state)."""
        return {
            "frames": torch.from_numpy(self.frames),
            "caption": self.caption,
            "actions": None if self.actions is None else torch.from_numpy(self.actions),
            "is_image": False,
            "meta": {"world": world, "seed": self.seed, "state": self.state},
        }


class World(Protocol):
    name: str

    def render(self, seed: int) -> Clip: ...


def check_seed(seed: int) -> int:
    """Seeds are non-negative integers (numpy's generators refuse negative ones)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_clip_size(world: str, height: int, width: int, num_frames: int) -> None:
    """Worlds draw at least 8x8 pixels and one frame."""
    if height < 8 or width < 8:
        raise ValueError(f"{world} needs images of at least 8x8, got {height}x{width}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


class WorldDataset(Dataset):
    """Sample i is `world.render(seeds[i])` as a sample dict; rendering happens in __getitem__."""

    def __init__(self, world: World, seeds: Sequence[int]) -> None:
        self.world = world
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.world.render(self.seeds[index]).to_sample(self.world.name)
