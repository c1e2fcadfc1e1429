"""Atomic writes: the target changes only when the writer finishes, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from wd_data._atomic import atomic_path


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
