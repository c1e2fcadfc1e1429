"""The STPT forward replayed as one CUDA graph, for loops that call it again and again at one shape.

Every step of a sampling run calls the network with the same token shape and a condition of the same layout. Eager
PyTorch launches each of its hundreds of kernels from Python; a captured graph launches them all at once, so the
host no longer sets the pace when the kernels are short.
"""

from __future__ import annotations

import dataclasses

import torch

from wd_stpt.condition import STPTCondition
from wd_stpt.model import STPT


class GraphedForward:
    """A drop-in `model_fn(tokens, cond)` that replays `model` as a CUDA graph.

    Each call copies the tokens and the condition's tensors into the graph's inputs and replays it. The graph is
    captured at the first call and again whenever the token shape or the condition's layout (which fields are set,
    their shapes and dtypes) changes. Call it under the autocast the replays should use, and compile the model
    first if wanted: both are fixed at capture. The returned logits are the graph's output buffer, overwritten by
    the next call (clone them to keep them). Replays skip the token-range check (it would read the values on the
    host): give it ids in [0, codebook_size], as a sampler does.
    """

    def __init__(self, model: STPT, warmup: int = 2) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the eager checks run there), got {warmup}")
        self.model, self.warmup = model, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.layout: tuple | None = None
        self.tokens = self.logits = torch.empty(0)
        self.cond: STPTCondition | None = None

    def __call__(self, tokens: torch.Tensor, cond: STPTCondition | None = None) -> torch.Tensor:
        """tokens int (B, N, h, w) on CUDA -> logits (B, N, h, w, K), valid until the next call."""
        if tokens.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the tokens and the model on a CUDA device, got {tokens.device}")
        if cond is not None:  # shapes and types only (no host sync): a replay copies, and copy_ would broadcast
            cond.check(tokens.shape[0], tokens.shape[1], self.model.config.text_dim, self.model.config.action_dim)
        layout = _layout(tokens, cond)
        if self.graph is None or layout != self.layout:
            self._capture(tokens, cond)
            self.layout = layout
        self.tokens.copy_(tokens)
        if cond is not None:
            for name, static in _fields(self.cond).items():
                if static is not None:
                    static.copy_(getattr(cond, name))
        self.graph.replay()
        return self.logits

    @torch.no_grad()
    def _capture(self, tokens: torch.Tensor, cond: STPTCondition | None) -> None:
        self.graph = None  # frees the previous graph's memory pool before the next capture takes one
        self.tokens = tokens.clone()
        self.cond = None if cond is None else STPTCondition(
            **{name: None if value is None else value.clone() for name, value in _fields(cond).items()})
        # Warm-up on a side stream, as torch.cuda.graph asks: the eager checks, lazy initialisation and any
        # compilation happen here, not inside the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(self.tokens, self.cond)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.model(self.tokens, self.cond)
        self.graph = graph


def _fields(cond: STPTCondition) -> dict[str, torch.Tensor | None]:
    return {field.name: getattr(cond, field.name) for field in dataclasses.fields(cond)}


def _layout(tokens: torch.Tensor, cond: STPTCondition | None) -> tuple:
    """What a captured graph is specific to: the token shape and device, and each condition field's presence,
    shape, dtype and device."""
    fields = () if cond is None else tuple(
        (name, None if value is None else (value.shape, value.dtype, value.device))
        for name, value in _fields(cond).items())
    return tokens.shape, tokens.device, cond is None, fields
