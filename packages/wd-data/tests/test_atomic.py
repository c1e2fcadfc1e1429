"""Atomic writes: the target changes only when the writer finishes, and no temporary file is left behind."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from wd_data import write_video
from wd_data._atomic import atomic_path
from wd_data.video_io import check_video_fps


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        with open(temporary, "w") as handle:
            handle.write("half of the new")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and [path.name for path in tmp_path.iterdir()] == ["manifest.json"]


def test_finished_write_replaces_the_file_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "clip.gif"
    with atomic_path(target) as temporary:
        assert temporary.endswith(".gif") and not target.exists()
        with open(temporary, "w") as handle:
            handle.write("new")
    assert target.read_text() == "new" and [path.name for path in target.parent.iterdir()] == ["clip.gif"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_end_with_the_mode_of_a_plain_write(tmp_path, umask):
    """A new file gets the umask's mode (mkstemp would force 0600); a replaced one keeps its own mode."""
    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain.gif"
        plain.write_text("x")
        with atomic_path(tmp_path / "atomic.gif") as temporary, open(temporary, "w") as handle:
            handle.write("new")
        assert stat.S_IMODE((tmp_path / "atomic.gif").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
        assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
        os.chmod(tmp_path / "atomic.gif", 0o640)
        with atomic_path(tmp_path / "atomic.gif") as temporary, open(temporary, "w") as handle:
            handle.write("newer")
        assert stat.S_IMODE((tmp_path / "atomic.gif").stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_a_failed_write_names_the_users_file_not_the_temporary(tmp_path):
    target = tmp_path / "clip.mp4"
    with pytest.raises(OSError) as raised, atomic_path(target) as temporary:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), temporary)
    assert str(raised.value) == f"cannot write {target}: No space left on device"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "fps", "ok"), [
    ("a.gif", 50.0, True), ("a.gif", 60.0, False), ("a.gif", 1e-6, False), ("a.mp4", 240.0, True),
    ("a.mp4", 1e-6, False), ("a.mp4", 1e9, False), ("a.mp4", float("nan"), False), ("a", 8.0, False),
])
def test_frame_rates_a_format_cannot_store_are_refused_before_writing(tmp_path, name, fps, ok):
    if ok:
        check_video_fps(tmp_path / name, fps)
        return
    with pytest.raises(ValueError, match=r"fps must be finite and in|suffix picks the format"):
        check_video_fps(tmp_path / name, fps)
    with pytest.raises(ValueError):
        write_video(tmp_path / name, np.zeros((2, 8, 8, 3), dtype=np.uint8), fps=fps)
    assert list(tmp_path.iterdir()) == []
