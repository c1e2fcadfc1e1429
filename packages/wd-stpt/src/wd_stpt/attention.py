"""One attention function behind three backends: SDPA (default), xformers (CUDA), plain math (tests; bf16 on the CPU)."""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def xformers_usable(device: torch.device) -> bool:
    """True when xformers is importable and `device` is CUDA (xformers ships no CPU kernels)."""
    return device.type == "cuda" and importlib.util.find_spec("xformers") is not None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Softmax attention. q (B, H, Lq, D), k/v (B, H, Lk, D), mask bool broadcastable to (B, H, Lq, Lk),
    True = may attend; every query must see at least one key. Returns (B, H, Lq, D)."""
    if backend == "math":
        return _math_attention(q, k, v, mask)
    if backend == "xformers":
        if xformers_usable(q.device):
            try:
                return _xformers_attention(q, k, v, mask)
            # Any failure: a wheel built for another torch fails in many ways (ImportError, OSError on a
            # missing symbol, NotImplementedError for no kernel); bad inputs still raise in SDPA below.
            except Exception as error:  # noqa: BLE001
                _warn_once(f"xformers attention failed ({type(error).__name__}: {error}); using PyTorch SDPA")
        else:
            _warn_once("xformers is not installed or the tensors are not on CUDA; using PyTorch SDPA")
    elif backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r}; choose sdpa, xformers or math")
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        # SDPA's fused CPU kernel runs bf16 at under half the speed of two batched matmuls at window sizes
        # (docs/benchmarks.md, "bf16 on the CPU"), while the matmuls use the CPU's bf16 units.
        return _math_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    bias = None
    if mask is not None:
        batch, heads, length_q, length_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        # xformers wants the bias's last dim 16-byte aligned: allocate padded, then slice.
        padded = -(-length_k // 8) * 8
        storage = q.new_zeros(mask.shape[0], mask.shape[1], length_q, padded)
        bias = storage[..., :length_k]
        bias.masked_fill_(~mask.expand(mask.shape[0], mask.shape[1], length_q, length_k), float("-inf"))
        bias = bias.expand(batch, heads, length_q, length_k)
    # xformers takes (B, L, H, D).
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)
