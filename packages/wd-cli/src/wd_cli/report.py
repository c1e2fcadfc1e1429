"""The quickstart's report: per task the input, its mask and the output as GIFs and MP4s, a PNG contact sheet,
and `index.html` with the quality table."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from wd_data import write_video

from wd_cli.evaluation import Metric, format_value

# Unknown tokens are shown in the mask column tinted with this colour (half opacity).
_UNKNOWN_TINT = np.array([255, 0, 255], dtype=np.float32)
_LABEL_HEIGHT = 12


@dataclass
class TaskResult:
    """One task's run: input frames (N, H, W, 3) uint8 (None for text-to-video), the known mask (N, h, w) on
    the token grid, the generated frames (N, H, W, 3) uint8, and a line saying what was asked."""

    name: str
    description: str
    input_frames: np.ndarray | None
    known: np.ndarray
    output_frames: np.ndarray


def _source(task: TaskResult) -> np.ndarray:
    """uint8 (N, H, W, 3): the input frames the output lines up with, black where the task had none."""
    frames = task.output_frames
    return np.zeros_like(frames) if task.input_frames is None else task.input_frames[: len(frames)]


def mask_view(task: TaskResult) -> np.ndarray:
    """uint8 (N, H, W, 3): the input (black where there is none) with every unknown token's cell tinted."""
    frames, base = task.output_frames, _source(task)
    factor_h, factor_w = frames.shape[1] // task.known.shape[1], frames.shape[2] // task.known.shape[2]
    unknown = ~task.known.repeat(factor_h, axis=1).repeat(factor_w, axis=2)
    tinted = base.astype(np.float32)
    tinted[unknown] = 0.5 * tinted[unknown] + 0.5 * _UNKNOWN_TINT
    return tinted.round().astype(np.uint8)


def task_columns(task: TaskResult) -> dict[str, np.ndarray]:
    """The three clips shown for a task, each (N, H, W, 3)."""
    return {"input": _source(task), "mask": mask_view(task), "output": task.output_frames}


def write_task_media(task: TaskResult, directory: Path, fps: float) -> dict[str, str]:
    """Write input/mask/output GIFs and the output MP4 of `task` under directory/tasks/<name>/; -> column ->
    path relative to `directory` (where index.html goes)."""
    folder = f"tasks/{task.name}"
    (directory / folder).mkdir(parents=True, exist_ok=True)
    paths = {column: f"{folder}/{column}.gif" for column in ("input", "mask", "output")}
    for column, frames in task_columns(task).items():
        write_video(directory / paths[column], frames, fps=fps)
    paths["mp4"] = f"{folder}/output.mp4"
    write_video(directory / paths["mp4"], task.output_frames, fps=fps)
    return paths


def contact_sheet(tasks: list[TaskResult], path: Path, frames_shown: int = 4, scale: int = 2) -> Path:
    """A PNG with one row per task and column: `frames_shown` evenly spaced frames of input, mask, output."""
    rows = []
    for task in tasks:
        columns = task_columns(task)
        picks = np.linspace(0, len(task.output_frames) - 1, frames_shown).round().astype(int)
        strips = [np.concatenate(list(frames[picks]), axis=1) for frames in columns.values()]
        gap = np.full((strips[0].shape[0], 4, 3), 255, dtype=np.uint8)
        row = np.concatenate([part for strip in strips for part in (strip, gap)][:-1], axis=1)
        rows.append(_labelled(row, f"{task.name}: input | mask (tinted = generated) | output", scale))
    width = max(row.shape[1] for row in rows)
    sheet = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
                            for row in rows])
    Image.fromarray(sheet).save(path)
    return path


def _labelled(row: np.ndarray, label: str, scale: int) -> np.ndarray:
    """The row enlarged `scale` times (nearest neighbour) under a white band holding `label`."""
    image = Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (image.width, image.height + _LABEL_HEIGHT + 4), "white")
    canvas.paste(image, (0, _LABEL_HEIGHT + 4))
    ImageDraw.Draw(canvas).text((2, 2), label, fill="black")
    return np.asarray(canvas)


def write_index(
    tasks: list[TaskResult], media: dict[str, dict[str, str]], metrics: list[Metric], directory: Path,
    sheet: str = "contact_sheet.png",
) -> Path:
    """index.html: the quality table, then one row per task with its input, mask and output side by side."""
    rows = "\n".join(
        f"<tr><td><b>{html.escape(task.name)}</b><br>{html.escape(task.description)}"
        f"<br><a href='{media[task.name]['mp4']}'>output.mp4</a></td>"
        + "".join(f"<td><img src='{media[task.name][column]}' width='192'></td>" for column in ("input", "mask", "output"))
        + "</tr>"
        for task in tasks
    )
    table = "\n".join(
        f"<tr><td>{html.escape(m.name)}</td><td>{format_value(m)}</td><td>{m.baseline:.3f} "
        f"({html.escape(m.baseline_name)})</td><td>{'yes' if m.beats_baseline else 'no'}</td>"
        f"<td>{'-' if m.on_truth is None else f'{m.on_truth:.3f}'}</td></tr>"
        for m in metrics
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>WorldDreamer quickstart</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 10px;vertical-align:top}}
img{{image-rendering:pixelated}} table{{border-collapse:collapse}} tr{{border-bottom:1px solid #ddd}}</style></head>
<body><h1>WorldDreamer quickstart</h1>
<p>Every clip below was generated on held-out seeds the models never saw in training. Mask column: the input
with the tokens the model generated tinted magenta. <a href="{sheet}">Contact sheet (PNG)</a>.</p>
<h2>Quality on held-out clips</h2>
<table><tr><th>metric</th><th>model [95% interval]</th><th>baseline</th><th>beats it</th><th>true clips</th></tr>
{table}
</table>
<h2>The tasks</h2>
<table><tr><th>task</th><th>input</th><th>mask</th><th>output</th></tr>
{rows}
</table></body></html>
"""
    path = directory / "index.html"
    path.write_text(page)
    return path
