"""One trainer per run directory: `run_dir/train.lock`, locked with flock(2) while a run trains and naming its
holder (pid, host, start time, command).

The kernel drops a flock when its process dies, however it dies, so a lock left by a killed trainer is free: the
next trainer takes it over and warns, naming the dead holder. A clean exit empties the file (it is never deleted:
deleting a lock file lets two processes lock two different files of one name).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "train.lock"
_held: set[Path] = set()  # run directories this process holds: a nested hold is a no-op


class RunDirectoryBusy(OSError):
    """Another trainer holds the run directory; the message is one line naming it."""


def describe_holder(text: str) -> str:
    """A lock file's content -> "pid 12 on host h, started 2025-01-02 10:00:00 (wd train stpt ...)"."""
    try:
        holder = json.loads(text)
        return (f"pid {holder['pid']} on host {holder['host']}, started {holder['started']} "
                f"({holder['command']})")
    except (json.JSONDecodeError, KeyError, TypeError):
        return "its lock file does not say which process"


@contextlib.contextmanager
def hold_run_directory(run_dir: str | Path) -> Iterator[None]:
    """Create `run_dir` and hold its lock for the block; RunDirectoryBusy when another process holds it. A run
    directory this call created is removed again when nothing but the lock file ended up in it."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+", errors="replace") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryBusy(f"{run_dir} is in use by another trainer ({describe_holder(handle.read())}); "
                                   f"wait for it or stop it (lock file {path})") from None
        except OSError as error:  # a filesystem without flock: train, but say that nothing guards the directory
            warnings.warn(f"cannot lock {path} ({error.strerror}): make sure no other trainer uses {run_dir}",
                          stacklevel=3)
        previous = handle.read()
        if previous.strip():
            warnings.warn(f"taking over {path} from a trainer that is no longer running ({describe_holder(previous)})",
                          stacklevel=3)
        _write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                   "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds")}))
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            _write(handle, "")
            if created and [entry.name for entry in run_dir.iterdir()] == [LOCK_FILE]:
                path.unlink()
                run_dir.rmdir()


def _write(handle, text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
