"""Device and precision in one place: names -> torch objects, and the autocast context of the STPT forward."""

from __future__ import annotations

import contextlib

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


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" (or a torch dtype); None or "auto" -> bf16 on CUDA that supports it, else fp32.

    fp16 on the CPU becomes fp32 (CPU autocast has no fast fp16 path)."""
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    dtype = DTYPES.get(name) if isinstance(name, str) else name
    if dtype not in DTYPES.values():
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return torch.float32 if dtype == torch.float16 and device.type == "cpu" else dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass on `device`; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
