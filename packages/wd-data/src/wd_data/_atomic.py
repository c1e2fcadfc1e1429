"""Write a file under a temporary name in the same folder and rename it into place when complete."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to disk, so that a rename after it cannot outlive its contents in a crash."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path with the same suffix (writers pick formats by suffix); rename it to `path` on
    success, delete it on failure, so readers never see a partial file.

    The file ends with the mode a plain write gives: the umask's, or the old file's when it replaces one. A failed
    write is an OSError naming `path`, never the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = str(path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"))
    try:
        yield temporary
        fsync_file(temporary)
        os.chmod(temporary, _plain_file_mode(path))
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        Path(temporary).unlink(missing_ok=True)


def _plain_file_mode(path: Path) -> int:
    """The mode `open(path, "w")` would leave: the file's own when it exists, else 0o666 less the umask (writers
    such as safetensors create their files 0600, which other users could not read)."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
