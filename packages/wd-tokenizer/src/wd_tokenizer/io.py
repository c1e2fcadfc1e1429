"""File helpers: atomic writes (temporary sibling, then one rename) and safe reads with one-line errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


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


def save_module_weights(module: nn.Module, path: str | Path) -> None:
    """Write `module`'s state dict to a safetensors file atomically, from the CPU."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    with atomic_writer(path) as tmp_path:
        save_file(state, tmp_path)


def checkpoint_dir(directory: str | Path) -> Path:
    """`directory` as a Path, or a one-line `FileNotFoundError` when it is not an existing directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    return directory


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`, with one-line errors naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}")
    return values


def read_failure(error: Exception) -> str:
    """One line saying why a weights file did not load."""
    text = str(error).strip()
    if text.startswith("Weights only load failed"):
        return "it holds Python objects other than tensors, refused because unpickling them could run code"
    if isinstance(error, EOFError) or not text:
        return "the file is empty or cut short"
    return f"{type(error).__name__}: {text.splitlines()[0]}"


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file, or a torch pickle read with `weights_only=True` (no code runs), onto `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(path, device=str(device))
        else:
            tensors = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # both readers raise many types for a corrupt file; name the file, keep the cause
        raise ValueError(f"cannot read weights from {path}: {read_failure(error)}") from error
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ValueError(f"{path} must hold a flat name -> tensor dict (a state dict)")
    return tensors
