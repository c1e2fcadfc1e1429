"""The quickstart report: the mask view tints exactly the generated tokens' cells, files and page are complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wd_cli.evaluation import Metric
from wd_cli.media import read_frames
from wd_cli.report import TaskResult, contact_sheet, mask_view, write_index, write_task_media


def _task(name: str, with_input: bool = True) -> TaskResult:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    known = np.zeros((4, 4, 4), dtype=bool)
    known[0] = True  # the first frame given
    known[1:, :2] = True  # the top half of the others
    return TaskResult(name, f"{name} <test>", frames if with_input else None, known, frames[::-1].copy())


def test_mask_view_tints_exactly_the_unknown_cells() -> None:
    task = _task("inpaint")
    view = mask_view(task)
    unknown = ~task.known.repeat(4, axis=1).repeat(4, axis=2)
    assert np.array_equal(view[~unknown], task.input_frames[~unknown])
    expected = np.round(0.5 * task.input_frames[unknown] + 0.5 * np.array([255, 0, 255])).astype(np.uint8)
    assert np.array_equal(view[unknown], expected)
    blank = mask_view(_task("text2video", with_input=False))
    assert blank[0].max() == 0 and (blank[1:, 8:] == [128, 0, 128]).all()


def test_media_sheet_and_index(tmp_path: Path) -> None:
    tasks = [_task("image2video"), _task("text2video", with_input=False)]
    media = {task.name: write_task_media(task, tmp_path, fps=4.0) for task in tasks}
    for column in ("input", "mask", "output", "mp4"):
        assert read_frames(tmp_path / media["image2video"][column]).shape == (4, 16, 16, 3)
    # Text-to-video has no input: a black clip whose mask view is the same tint from frame 1 on; a GIF stores
    # identical consecutive frames once (Pillow merges them), so those read back as fewer frames.
    assert read_frames(tmp_path / media["text2video"]["input"]).max() == 0
    assert read_frames(tmp_path / media["text2video"]["output"]).shape == (4, 16, 16, 3)
    sheet = Image.open(contact_sheet(tasks, tmp_path / "sheet.png", frames_shown=3, scale=2))
    # A row: 3 columns of 3 frames (16 px) and 2 gaps (4 px), scaled 2x, under a 16 px label band; 2 rows.
    assert sheet.size == (2 * (9 * 16 + 2 * 4), 2 * (2 * 16 + 16))
    metrics = [Metric("image2video PSNR", 21.5, 19.25, "copy first frame", "higher", None)]
    page = write_index(tasks, media, metrics, tmp_path).read_text()
    assert page.count("<img ") == 6 and "image2video/output.gif" in page
    assert "text2video &lt;test&gt;" in page  # descriptions are escaped
    assert "21.500" in page and "19.250 (copy first frame)" in page and ">yes<" in page
