"""Shared behaviour of the file-backed datasets: skip bad samples, count and log them, seed per sample."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wd_data.errors import BadSampleError, DataSourceError

logger = logging.getLogger(__name__)

MAX_REASONS = 5  # skip reasons kept for reports; every skip is logged
# A skip rate is judged only after this many samples: bad files cluster (one broken folder or shard), so a
# rate over the first few samples says little about the whole source.
MIN_SAMPLES_FOR_RATE = 100


class SkipLog:
    """Counts samples read and skipped, keeps the first few skip reasons, and logs every skip (what and why)."""

    def __init__(self) -> None:
        self.read = 0
        self.skipped = 0
        self.reasons: list[str] = []

    def skip(self, what: str, reason: object, count: int = 1) -> None:
        """Record `count` samples lost at `what` (a file and row, or a shard and key) because of `reason`."""
        self.skipped += count
        message = f"{what}: {' '.join(str(reason).split())}"
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(message)
        logger.warning("skipping %s (%d skipped so far in this process)", message, self.skipped)


def check_skip_rate(read: int, skipped: int, limit: float, what: str, first_reason: str = "") -> None:
    """DataSourceError, in one line, when `what` skipped more than `limit` of its samples (judged from
    MIN_SAMPLES_FOR_RATE samples on)."""
    attempts = read + skipped
    if attempts >= MIN_SAMPLES_FOR_RATE and skipped > limit * attempts:
        first = f"; first: {first_reason}" if first_reason else ""
        raise DataSourceError(f"{what}: {skipped} of {attempts} samples skipped ({skipped / attempts:.0%}), more "
                              f"than the limit of {limit:.0%}{first}")


class SkipCounter:
    """Gives a dataset a `skips` log (with DataLoader workers each worker process holds its own)."""

    @property
    def skips(self) -> SkipLog:
        if "_skips" not in self.__dict__:
            self._skips = SkipLog()
        return self._skips

    @property
    def num_skipped(self) -> int:
        return self.skips.skipped

    def _skip(self, what: str, error: object) -> None:
        self.skips.skip(what, error)


def check_counts(**counts: int | None) -> None:
    """Config counts (frames, strides, intervals) must be ints >= 1; None means "use the default"."""
    for name, count in counts.items():
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"{name} must be an int >= 1, got {count!r}")


def sample_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from integer keys (seed, epoch, index): reproducible in any worker."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


class SkippingDataset(SkipCounter, Dataset, ABC):
    """Map-style dataset whose `__getitem__` replaces a bad sample by the next index (wrapping).

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
        """The sample at `index`; raises BadSampleError (e.g. MediaReadError) when it cannot be used."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        attempts = min(len(self), self.max_attempts)
        for attempt in range(attempts):
            candidate = (index + attempt) % len(self)
            try:
                sample = self.load(candidate)
            except BadSampleError as error:
                self._skip(f"sample {candidate}", error)
                continue
            self.skips.read += 1
            sample["meta"]["num_skipped"] = attempt
            return sample
        raise DataSourceError(
            f"no readable sample in {attempts} of {len(self)} indices from {index}; first: {self.skips.reasons[0]}"
        )
