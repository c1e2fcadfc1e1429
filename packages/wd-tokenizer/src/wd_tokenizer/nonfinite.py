"""Non-finite numbers in training: a step whose loss or gradient norm is NaN or inf is skipped (its gradients are
dropped, nothing is updated), too many skips in a row stop the run with one line, and weights are checked before
each checkpoint so that none ever holds NaN or inf."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


class TrainingDiverged(RuntimeError):
    """Training cannot go on: too many non-finite steps in a row, or non-finite weights. The message is one line."""


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf (this process's shard of a sharded one),
    or None."""
    for name, tensor in named_tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 DTensor: its shard
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            return name
    return None


@torch.no_grad()
def buffer_snapshot(*modules: torch.nn.Module) -> Callable[[], None]:
    """Copy the buffers of `modules` (BatchNorm statistics, EMA codebooks: a forward pass updates them); -> a
    function that puts the copies back, so that a skipped step leaves them as they were too."""
    saved = [(buffer, buffer.clone()) for module in modules for buffer in module.buffers()]

    @torch.no_grad()
    def restore() -> None:
        for buffer, copy in saved:
            buffer.copy_(copy)

    return restore


def all_finite(*values: float) -> bool:
    return all(math.isfinite(value) for value in values)


@dataclass
class SkippedSteps:
    """Counts optimizer steps skipped for a non-finite loss or gradient norm; `limit` skips in a row raise
    TrainingDiverged naming `setting`, the config field that sets the limit."""

    limit: int
    setting: str
    total: int = 0
    in_a_row: int = 0

    def record(self, skipped: bool, step: int, values: dict[str, float]) -> None:
        """Count step `step` (skipped or not); `values` (loss, grad_norm...) go into the message."""
        if not skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            found = ", ".join(f"{name} {value}" for name, value in values.items())
            raise TrainingDiverged(
                f"training diverged: {self.in_a_row} steps in a row had a non-finite loss or gradient (the last, "
                f"step {step}: {found}) and were skipped; lower the learning rate or check the data, then resume "
                f"from the last checkpoint ({self.setting} sets how many skips in a row stop the run)")
