"""File helpers: atomic writes (temporary sibling, then one rename) and safe tensor-file reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path) as tmp_path:
        tmp_path.write_text(text)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a torch pickle read with `weights_only=True` (no code runs), onto the CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
