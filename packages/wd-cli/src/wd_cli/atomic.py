"""Write a whole directory under a temporary name and swap it into place when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from wd_tokenizer.io import write_reason


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory next to `path`; on success it replaces `path` (an older directory there
    is removed after the swap), on failure it is deleted, so readers never see a half-written directory. It is
    made with a plain mkdir, so it ends with the umask's mode (mkdtemp would force 0700). A failed write is a
    one-line OSError naming `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
        yield staging
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            try:
                os.replace(staging, path)
            except OSError:
                os.replace(old, path)  # put the old directory back
                raise
            shutil.rmtree(old, ignore_errors=True)  # the new directory is in place; a leftover is harmless
        else:
            os.replace(staging, path)
    except OSError as error:  # name the user's directory, not the staging one
        raise OSError(f"cannot write {path}: {write_reason(error)}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
