"""Batching a conditional and an unconditional prompt into one network call."""

from typing import Any, Protocol, Self, runtime_checkable

import torch


@runtime_checkable
class ConcatenableCondition(Protocol):
    """A network condition that can be stacked with another along the batch dimension."""

    def concat(self, other: Self) -> Self:
        """This condition's samples followed by `other`'s (batch sizes add)."""
        ...


def concat_conditions(cond: Any, uncond: Any) -> Any:
    """None + None -> None; tensors -> torch.cat on dim 0; otherwise cond.concat(uncond)."""
    if cond is None and uncond is None:
        return None
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        return torch.cat([cond, uncond], dim=0)
    if isinstance(cond, ConcatenableCondition) and type(uncond) is type(cond):
        return cond.concat(uncond)
    raise TypeError(
        f"cannot batch conditions of types {type(cond).__name__} and {type(uncond).__name__}: "
        "pass two None, two tensors, or two objects of one type with a concat(other) method"
    )
