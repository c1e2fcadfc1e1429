"""The STPT forward replayed as one CUDA graph, for loops that call it again and again at one shape.

Every step of a sampling run calls the network with the same token shape and the same condition. Eager PyTorch
launches each of its hundreds of kernels from Python; a captured graph launches them all at once, so the host no
longer sets the pace when the kernels are short.
"""

from __future__ import annotations

import torch

from wd_stpt.condition import STPTCondition
from wd_stpt.model import STPT


class GraphedForward:
    """A drop-in `model_fn(tokens, cond)` that replays `model` as a CUDA graph.

    The graph is captured at the first call and again whenever the token shape or the condition object changes
    (a sampler passes one condition object to every step of a run). Call it under the autocast the replays should
    use, and compile the model first if wanted: both are fixed at capture. The returned logits are the graph's
    output buffer, overwritten by the next call (clone them to keep them). The condition's tensors are read where
    they were at capture. Replays skip the token-range check (it would read the values on the host): give it ids
    in [0, codebook_size], as a sampler does.
    """

    def __init__(self, model: STPT, warmup: int = 2) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the eager checks run there), got {warmup}")
        self.model, self.warmup = model, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.cond: STPTCondition | None = None
        self.tokens = self.logits = torch.empty(0)

    def __call__(self, tokens: torch.Tensor, cond: STPTCondition | None = None) -> torch.Tensor:
        """tokens int (B, N, h, w) on CUDA -> logits (B, N, h, w, K), valid until the next call."""
        if tokens.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the tokens and the model on a CUDA device, got {tokens.device}")
        if self.graph is None or cond is not self.cond or tokens.shape != self.tokens.shape:
            self._capture(tokens, cond)
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits

    @torch.no_grad()
    def _capture(self, tokens: torch.Tensor, cond: STPTCondition | None) -> None:
        self.graph = None  # frees the previous graph's memory pool before the next capture takes one
        self.cond, self.tokens = cond, tokens.clone()
        # Warm-up on a side stream, as torch.cuda.graph asks: the eager checks, lazy initialisation and any
        # compilation happen here, not inside the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(self.tokens, cond)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.model(self.tokens, cond)
        self.graph = graph
