"""Shared behaviour of the file-backed datasets: skip undecodable samples, count them, seed per sample."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wd_data.errors import MediaReadError

logger = logging.getLogger(__name__)


class SkipCounter:
    """Counts and logs skipped samples; with DataLoader workers each worker holds its own count."""

    num_skipped: int = 0

    def _skip(self, what: str, error: Exception) -> None:
        self.num_skipped += 1
        logger.warning("skipping %s (%d skipped so far in this process): %s", what, self.num_skipped, error)


def check_counts(**counts: int | None) -> None:
    """Config counts (frames, strides, intervals) must be ints >= 1; None means "use the default"."""
    for name, count in counts.items():
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"{name} must be an int >= 1, got {count!r}")


def sample_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from integer keys (seed, epoch, index): reproducible in any worker."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


class SkippingDataset(SkipCounter, Dataset, ABC):
    """Map-style dataset whose `__getitem__` replaces an undecodable sample by the next index (wrapping).

    The epoch therefore never ends early; `meta["num_skipped"]` says how many indices were passed over.
    """

    max_attempts = 64
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the per-sample random draws (clip starts, crops, groupings) for a new epoch."""
        self.epoch = epoch

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> dict[str, Any]:
        """The sample at `index`; raises MediaReadError when its file cannot be decoded."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        attempts = min(len(self), self.max_attempts)
        for attempt in range(attempts):
            candidate = (index + attempt) % len(self)
            try:
                sample = self.load(candidate)
            except MediaReadError as error:
                self._skip(f"sample {candidate}", error)
                continue
            sample["meta"]["num_skipped"] = attempt
            return sample
        raise RuntimeError(
            f"no readable sample in {attempts} of {len(self)} indices from {index}; see the warnings above"
        )
