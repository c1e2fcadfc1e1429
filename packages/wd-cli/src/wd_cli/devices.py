"""Device and precision in one place: names -> torch objects, and the autocast context of the STPT forward."""

from __future__ import annotations

import contextlib
import functools
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """"auto" or None -> cuda when available, else cpu; anything else as torch reads it ("cuda:1", "cpu")."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


# A bf16 matmul must beat fp32 by this much before bf16 runs on the CPU: a model gains less than its matmuls (its
# elementwise work and the casts do not speed up); measured 3.4x matmul -> 1.6-2.6x per training step with AMX.
BF16_CPU_MIN_SPEEDUP = 2.0


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (512^3, best of 5 each; measured
    once per process in ~0.1 s). Well above 1 only where the CPU has bf16 units (AMX, AVX512-BF16); elsewhere
    torch emulates bf16, slower than fp32."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    best(a, b)  # the first call pays for the library's start-up
    return best(a, b) / best(a.bfloat16(), b.bfloat16())


def prefers_bf16(device: torch.device) -> bool:
    """bf16 autocast is the faster choice on `device`: a CUDA device that supports it, or a CPU whose bf16 matmul
    is measured at least BF16_CPU_MIN_SPEEDUP times faster than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_speedup() >= BF16_CPU_MIN_SPEEDUP


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" (or a torch dtype); None or "auto" -> bf16 where `prefers_bf16`, else fp32.

    fp16 on the CPU becomes fp32 (CPU autocast has no fast fp16 path)."""
    if name is None or name == "auto":
        return torch.bfloat16 if prefers_bf16(device) else torch.float32
    dtype = DTYPES.get(name) if isinstance(name, str) else name
    if dtype not in DTYPES.values():
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return torch.float32 if dtype == torch.float16 and device.type == "cpu" else dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass on `device`; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
