"""A training run's checkpoints, `run_dir/checkpoints/step_XXXXXXX/`, safe against a kill or a failed write at any
moment.

A checkpoint is written under a temporary name (`.step_XXXXXXX.tmp-PID`), gets a `manifest.json` of its files'
SHA-256 last, and is renamed when complete; one that goes (pruned, or replaced by a new save of its step) is first
renamed to `.step_XXXXXXX.trash-...` and deleted after. So every `step_*` directory is complete, and what a killed
process leaves keeps a dot name that resume never lists and `remove_leftovers` deletes at the next start (the
caller holds the run directory's lock, so no other process is writing them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from wd_tokenizer.io import atomic_write_text, check_digests, directory_digests, read_json, write_reason

MANIFEST = "manifest.json"
_STEP_NAME = re.compile(r"step_(\d+)")
_LEFTOVER_NAME = re.compile(r"\.step_\d+\.(tmp|trash)-.+|\..+\.tmp-\d+")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, an I/O error); the message is one line, and nothing of the
    failed save is left behind."""


def checkpoint_step(directory: str | Path) -> int:
    """The training step of a checkpoint directory named `step_XXXXXXX`."""
    return int(Path(directory).name[len("step_"):])


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete or discarded ones have dot names and are never listed)."""
    folder = Path(run_dir) / "checkpoints"
    found = [path for path in folder.glob("step_*") if _STEP_NAME.fullmatch(path.name) and path.is_dir()]
    # By number: past 9,999,999 steps the zero-padded names no longer sort as text.
    return sorted(found, key=checkpoint_step)


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Delete what killed saves left in `run_dir` and its `checkpoints/` (staging and trash directories, temporary
    files of atomic writes); -> what was removed. Call it only while holding the run directory's lock."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for path in sorted(folder.glob(".*")) if folder.is_dir() else []:
            if _LEFTOVER_NAME.fullmatch(path.name):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                removed.append(path)
    return removed


def discard(directory: Path) -> None:
    """Remove a checkpoint: renamed to a trash name first (one step: it never looks half-deleted), then deleted.
    A deletion that fails leaves only the trash, which `remove_leftovers` removes at the next start."""
    trash = directory.with_name(f".{directory.name}.trash-{uuid.uuid4().hex[:8]}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def staged_checkpoint(run_dir: str | Path, step: int) -> Iterator[Path]:
    """Yield an empty staging directory for checkpoint `step`; on success it gets its manifest and becomes
    `checkpoints/step_XXXXXXX` (replacing one of that step), on any failure it is deleted. A failed write raises a
    one-line CheckpointWriteError naming the checkpoint."""
    final = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        yield staging
        atomic_write_text(staging / MANIFEST, json.dumps(directory_digests(staging), indent=1, sort_keys=True))
        if final.exists():
            discard(final)
        os.replace(staging, final)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        # torch.save reports a failed write as a RuntimeError, safetensors as a SafetensorError.
        if isinstance(error, OSError | RuntimeError | SafetensorError):
            raise CheckpointWriteError(f"cannot write checkpoint {final}: {write_reason(error)}; the previous "
                                       "checkpoints are kept") from error
        raise


def prune(run_dir: str | Path, keep: int) -> None:
    """Discard all but the newest `keep` checkpoints; CheckpointWriteError when one cannot be renamed away."""
    for old in checkpoint_dirs(run_dir)[:-keep]:
        try:
            discard(old)
        except OSError as error:
            raise CheckpointWriteError(f"cannot remove old checkpoint {old}: {write_reason(error)}; the newer "
                                       "checkpoints are kept") from error


def verify_checkpoint(directory: str | Path) -> None:
    """ValueError naming the first file of a checkpoint that is missing or differs from its manifest (a checkpoint
    written before manifests existed has none and passes)."""
    manifest = Path(directory) / MANIFEST
    if manifest.exists():
        check_digests(directory, read_json(manifest), manifest)
