"""The page's task forms: a form's fields -> one pipeline task -> its result written as the quickstart report
writes a task (input, tinted mask and output GIFs, the output MP4), plus one PNG sheet the page plays."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from wd_masking.sampler import StepCallback

from wd_cli.generate import ACCEPTS, NEEDS
from wd_cli.media import fit_frames, fit_inside, parse_actions
from wd_cli.pipeline import Box, Generation, SamplingOptions, WorldDreamerPipeline
from wd_cli.report import TaskResult, task_columns, write_task_media

TASKS = tuple(NEEDS)  # the tasks of `wd generate`, in its order
_ROLLOUTS = ("text2video", "image2video", "predict", "action2video")
_SHEET_GAP = 2  # white pixels between the sheet's columns


@dataclass(frozen=True)
class TaskRequest:
    """One submitted form. Uploads are named by their id; `actions` is CSV text (one row per frame); `frames` is
    the output length of a rollout, or the first frames of the video the other tasks use (interpolation's
    keyframes); `given` is how many first frames of the video prediction continues."""

    task: str
    prompt: str = ""
    image: str | None = None
    video: str | None = None
    actions: str | None = None
    box: Box | None = None
    border: Box | None = None
    mask_ratio: float | None = None
    every: int | None = None
    frames: int | None = None
    given: int | None = None
    steps: int | None = None
    seed: int = 0

    @classmethod
    def from_message(cls, fields: dict, tasks: tuple[str, ...] = TASKS) -> TaskRequest:
        """The form's JSON fields (null or missing = not given) -> a checked request; ValueError in one line."""
        task = fields.get("task")
        if task not in tasks:
            raise ValueError(f"unknown task {task!r}; this pipeline has {', '.join(tasks)}")
        known = {field.name for field in dataclasses.fields(cls)}
        if unknown := sorted(set(fields) - known):
            raise ValueError(f"unknown form fields {unknown}")
        values = {name: _checked(name, value) for name, value in fields.items()
                  if name != "task" and value is not None and value != ""}
        if unused := sorted(set(values) - ACCEPTS[task] - _EVERY_TASK - _EXTRA.get(task, set())):
            raise ValueError(f"{task} does not take {', '.join(unused)}")
        request = cls(task=task, **values)
        needs = NEEDS[task] | _EXTRA.get(task, set())
        if missing := sorted(name for name in needs if getattr(request, name) in (None, "")):
            raise ValueError(f"{task} needs {' and '.join(_LABELS.get(name, name) for name in missing)}")
        return request


# Fields every task takes, and the page's own per task (it draws a box instead of uploading a mask, names the
# keyframe spacing instead of an output length, and counts prediction's given frames).
_EVERY_TASK = {"frames", "steps", "seed"}
_EXTRA = {"inpaint": {"box"}, "interpolate": {"every"}, "predict": {"given"}}


_LABELS = {"image": "an image", "video": "a video", "prompt": "a prompt", "actions": "actions",
           "box": "a box drawn on the first frame", "every": "a keyframe spacing", "given": "given frames"}


def _checked(name: str, value: object) -> object:
    """One form field of the type its TaskRequest field has; ValueError naming it otherwise."""
    if name in ("prompt", "image", "video", "actions"):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text")
        return value
    if name in ("box", "border"):
        if not (isinstance(value, list) and len(value) == 4 and all(_is_int(part, 0) for part in value)):
            raise ValueError(f"{name} must be four whole numbers >= 0 (top, left, bottom, right)")
        return tuple(value)
    if name == "mask_ratio":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError("the strength must be a number in (0, 1]")
        return float(value)
    lowest = {"every": 2, "seed": 0}.get(name, 1)  # frames, given, steps: at least 1
    if not _is_int(value, lowest):
        raise ValueError(f"{name} must be a whole number >= {lowest}")
    return value


def _is_int(value: object, lowest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


@dataclass(frozen=True)
class TaskOutput:
    """A task's generation and its input frames uint8 (N, H, W, 3) lined up with the output (black where nothing
    was given; None when nothing was)."""

    generation: Generation
    inputs: np.ndarray | None


def run_request(pipeline: WorldDreamerPipeline, request: TaskRequest, frames_of: Callable[[str], np.ndarray],
                callback: StepCallback) -> TaskOutput:
    """Run the request; frames_of(upload id) -> its frames uint8 (M, H, W, 3); callback(step, tokens) after every
    decoding step (a Cancelled it raises ends the task)."""
    options = SamplingOptions(seed=request.seed, callback=callback)
    if request.steps is not None:
        options["steps"] = request.steps
    if request.frames is not None and request.task in _ROLLOUTS:
        options["num_frames"] = request.frames
    size = (pipeline.defaults.height, pipeline.defaults.width)
    image = None if request.image is None else frames_of(request.image)[0]
    video = None if request.video is None else frames_of(request.video)
    if video is not None and request.task not in _ROLLOUTS:
        video = video[: request.frames]
    actions = None if request.actions is None else parse_actions(request.actions)
    prompt = request.prompt
    match request.task:
        case "text2video":
            return TaskOutput(pipeline.text_to_video(prompt, actions, **options), None)
        case "image2video":
            return _lined_up(pipeline.image_to_video(image, prompt, **options), fit_frames(image, size))
        case "action2video":
            return _lined_up(pipeline.action_to_video(image, actions, prompt, **options), fit_frames(image, size))
        case "predict":
            given = video[: request.given]
            return _lined_up(pipeline.image_to_video(given, prompt, **options), fit_frames(given, size))
        case "interpolate":
            return _lined_up(pipeline.interpolate(video, request.every, prompt, **options), fit_frames(video, size))
        case "outpaint":
            shown = fit_inside(video, size)[0] if request.border is None else fit_frames(video, size)
            return _lined_up(pipeline.outpaint(video, request.border, prompt, **options), shown)
        case "stylize":
            result = pipeline.stylize(video, prompt, request.mask_ratio, **options)
            return _lined_up(result, fit_frames(video, size))
    return _lined_up(pipeline.inpaint(video, box=request.box, prompt=prompt, **options), fit_frames(video, size))


def _lined_up(result: Generation, given: torch.Tensor) -> TaskOutput:
    """given uint8 (k, H, W, 3) at the model's size placed on the output's frames: all of them when k matches,
    else the frames whose tokens are all given, in order (a rollout's first frames, interpolation's keyframes),
    black elsewhere."""
    given = given.numpy()
    if len(given) == len(result.frames):
        return TaskOutput(result, given)
    inputs = np.zeros_like(result.frames)
    complete = np.flatnonzero(result.known.reshape(len(result.known), -1).all(axis=1))
    inputs[complete[: len(given)]] = given[: len(complete)]
    return TaskOutput(result, inputs)


def write_result(output: TaskOutput, request: TaskRequest, directory: Path, fps: float) -> dict[str, str]:
    """The quickstart report's media of the task under `directory` (input/mask/output GIFs, output MP4) plus
    sheet.png (one row per frame: input | mask | output); -> name -> path relative to `directory`."""
    generation = output.generation
    description = f"{request.task}" + (f": {request.prompt!r}" if request.prompt else "")
    task = TaskResult(request.task, description, output.inputs, generation.known, generation.frames)
    paths = write_task_media(task, directory, fps)
    columns = list(task_columns(task).values())
    gap = np.full((*generation.frames.shape[:2], _SHEET_GAP, 3), 255, dtype=np.uint8)
    rows = np.concatenate([columns[0], gap, columns[1], gap, columns[2]], axis=2)  # (N, H, 3W + gaps, 3)
    Image.fromarray(np.concatenate(list(rows))).save(directory / "sheet.png")
    return {**paths, "sheet": "sheet.png"}
