"""File helpers: atomic writes (temporary sibling, then one rename), safe reads with one-line errors, and
SHA-256 digests of a directory's files (what checkpoint and pipeline manifests record)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on failure it is removed.

    The file ends with the mode a plain write gives: the umask's for a new file, the old file's when it replaces
    one. A failed write is an OSError naming `path`, not the
    temporary file."""
    path = Path(path)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp_path
        os.chmod(tmp_path, plain_file_mode(path))
        os.replace(tmp_path, path)
    except (OSError, SafetensorError) as error:
        raise write_error(path, error) from error
    finally:
        tmp_path.unlink(missing_ok=True)


def plain_file_mode(path: Path) -> int:
    """The mode `open(path, "w")` would leave: the file's own when it exists, else 0o666 less the umask (writers
    such as safetensors create their files 0600, which other users could not read)."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    return new_file_mode()


def new_file_mode() -> int:
    """0o666 less the umask: the mode `open(path, "w")` gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_error(path: str | Path, error: BaseException) -> OSError:
    """A one-line OSError saying why `path` (the user's file, not a temporary one) could not be written."""
    return OSError(f"cannot write {path}: {write_reason(error)}")


def write_reason(error: BaseException) -> str:
    """Why a write failed, in the system's words: the first OSError in the error's chain (torch.save and
    safetensors wrap the system's error in their own; safetensors only as "os error N"), else the first line of the
    innermost error (the outer ones may name a temporary file)."""
    cause: BaseException | None = error
    while cause is not None:
        number = re.search(r"os error (\d+)", str(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if number:
            return os.strerror(int(number.group(1)))
        error, cause = cause, cause.__cause__ or cause.__context__
    return first_line(error)


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
    return f"{type(error).__name__}: {first_line(error)}"


def read_state(path: str | Path) -> dict:
    """A dict saved with torch.save (optimizer and trainer state), read with `weights_only=True` (no code runs) to
    the CPU; a missing, cut-short or corrupt file is a one-line ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types for a corrupt file
        raise ValueError(f"cannot read {path}: {read_failure(error)}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a dict, got {type(state).__name__}")
    return state


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


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def directory_digests(directory: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative POSIX path: SHA-256} of every file under `directory`, except the relative paths in `exclude`."""
    directory = Path(directory)
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    return {path.relative_to(directory).as_posix(): file_digest(path) for path in files
            if path.relative_to(directory).as_posix() not in exclude}


def check_digests(directory: str | Path, expected: object, source: str | Path) -> None:
    """ValueError naming the first file of `directory` that is missing or whose SHA-256 differs from `expected`
    ({relative path: hex}, as `directory_digests` gives, read from `source`)."""
    directory = Path(directory)
    if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
        raise ValueError(f"{source}: the file checksums must be a table of relative path -> SHA-256 hex")
    for name, digest in expected.items():
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            raise ValueError(f"{path} is missing (it is listed in {source})")
        if file_digest(path) != digest:
            raise ValueError(f"{path} is damaged or was changed: its SHA-256 differs from the one in {source}")
