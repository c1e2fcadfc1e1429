"""Quality numbers on held-out synthetic clips (seeds never used in training), each beside a simple baseline.

What `wd quickstart` and `wd eval` report: tokenizer PSNR/SSIM, image-to-video PSNR and object-position error
against "copy the first frame", action-to-video turn directions (from the road's heading in view), and
text-to-video colour/shape agreement, all measured with the synthetic worlds' own detectors
(`wd_data.synthetic`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click
import numpy as np
import torch
from tqdm.auto import tqdm
from wd_data.synthetic import (
    KINDS,
    PALETTE,
    DriveConfig,
    DriveWorld,
    ShapesConfig,
    ShapesWorld,
    detect_shapes,
    estimate_road_heading,
    eval_seeds,
)
from wd_tokenizer import evaluate as evaluate_tokenizer
from wd_tokenizer.io import atomic_write_text
from wd_tokenizer.metrics import psnr, ssim

from wd_cli.errors import one_line_errors
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.train.configfile import apply_overrides, from_dict, to_plain


@dataclass
class Metric:
    """One row of the quality table: the model's number beside a baseline's, which direction is better, and
    the same measurement on the world's true clips where it is not trivial (the detector's ceiling)."""

    name: str
    value: float
    baseline: float
    baseline_name: str
    better: Literal["higher", "lower"]
    on_truth: float | None = None

    def __post_init__(self) -> None:
        # numpy scalars (from means) would make beats_baseline a numpy bool, which JSON refuses.
        self.value, self.baseline = float(self.value), float(self.baseline)
        self.on_truth = None if self.on_truth is None else float(self.on_truth)

    @property
    def beats_baseline(self) -> bool:
        """True when the model is strictly better than the baseline."""
        return self.value > self.baseline if self.better == "higher" else self.value < self.baseline


def synthetic_worlds(height: int, width: int, num_frames: int) -> tuple[ShapesConfig, DriveConfig]:
    """The worlds the quickstart trains on and `wd eval` measures by default: one large shape per shapes clip
    (its colour, kind and direction are all the caption names) moving 0.05-0.08 of the frame per frame, and
    drives turning up to 0.12 rad per frame. Motion is sized for 32 px frames and 4x4-pixel tokens: slower
    shapes (the world's default 0.02-0.06) move under half a token per frame, and a 0.03 rad turn moves the
    view 0.5 px a frame, too little for a small model to learn."""
    shapes = ShapesConfig(height=height, width=width, num_frames=num_frames, max_shapes=1, min_size=0.14,
                          max_size=0.22, min_speed=0.05, max_speed=0.08)
    return shapes, DriveConfig(height=height, width=width, num_frames=num_frames, max_yaw_change=0.12)


@dataclass
class EvalConfig:
    """Which held-out clips to generate and how; the worlds must match the pipeline's frame size and length."""

    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    drive: DriveConfig = field(default_factory=DriveConfig)
    clips: int = 8  # held-out clips per task (eval_seeds(clips))
    seed: int = 0  # generation seed of the first clip (clip i uses seed + i)
    turn_yaw: float = 0.1  # rad per frame of the left/right turn action sequences
    turn_speed: float = 6.0  # m/s of those sequences
    steps: int | None = None  # decoding steps (None: the pipeline's default)

    def __post_init__(self) -> None:
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if not self.turn_yaw > 0:
            raise ValueError(f"turn_yaw must be > 0, got {self.turn_yaw}")


def _pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def tokenizer_metrics(pipe: WorldDreamerPipeline, clips: Iterable[np.ndarray]) -> list[Metric]:
    """PSNR and SSIM of the tokenizer's round trip on uint8 clips (N, H, W, 3), beside the held-out mean colour."""
    batches = [_pixels(frames) for frames in clips]
    report = evaluate_tokenizer(pipe.tokenizer, batches)
    target = torch.cat(batches)
    mean = target.mean(dim=(0, 2, 3), keepdim=True).expand_as(target)
    return [
        Metric("tokenizer PSNR (dB)", report.psnr, psnr(mean, target), "mean colour", "higher"),
        Metric("tokenizer SSIM", report.ssim, ssim(mean, target), "mean colour", "higher"),
    ]


def _position_errors(frames: np.ndarray, state: dict, miss_penalty: float) -> np.ndarray:
    """(N, S) distance in pixels from each shape's true centre to the detection of its colour in each frame;
    `miss_penalty` where the colour is not found."""
    errors = np.full(state["positions"].shape[:2], miss_penalty, dtype=np.float64)
    colours = list(state["colours"])
    for frame_index, frame in enumerate(frames):
        for detection in detect_shapes(frame):
            if detection.colour in colours:
                shape = colours.index(detection.colour)
                true = state["positions"][frame_index, shape]
                errors[frame_index, shape] = math.dist(detection.centre, true)
    return errors


def image_to_video_metrics(
    pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True
) -> list[Metric]:
    """First frame + caption -> video, scored on frames 2..N against the ground truth and against copying
    the first frame N times (PSNR, and the shapes' position error from the world state)."""
    world = ShapesWorld(config.shapes)
    # A shape that is not found at all is as wrong as a guess in the far corner: half the image diagonal.
    miss = 0.5 * math.hypot(config.shapes.height, config.shapes.width)
    model_psnr, copy_psnr, model_error, copy_error, truth_error = [], [], [], [], []
    for index, seed in enumerate(tqdm(eval_seeds(config.clips), desc="eval image2video", disable=not progress)):
        clip = world.render(seed)
        generated = pipe.image_to_video(clip.frames[0], prompt=clip.caption, num_frames=len(clip.frames),
                                        steps=config.steps, seed=config.seed + index).frames
        copied = np.repeat(clip.frames[:1], len(clip.frames), axis=0)
        truth = _pixels(clip.frames[1:])
        model_psnr.append(psnr(_pixels(generated[1:]), truth))
        copy_psnr.append(psnr(_pixels(copied[1:]), truth))
        later = _from_frame(clip.state, 1)
        model_error.append(_position_errors(generated[1:], later, miss).mean())
        copy_error.append(_position_errors(copied[1:], later, miss).mean())
        truth_error.append(_position_errors(clip.frames[1:], later, miss).mean())
    return [
        Metric("image2video PSNR, frames 2..N (dB)", float(np.mean(model_psnr)), float(np.mean(copy_psnr)),
               "copy first frame", "higher"),
        Metric("image2video position error, frames 2..N (px)", float(np.mean(model_error)),
               float(np.mean(copy_error)), "copy first frame", "lower", float(np.mean(truth_error))),
    ]


def _from_frame(state: dict, start: int) -> dict:
    """The shapes state with per-frame arrays cut to frames start.. (per-shape arrays unchanged)."""
    return {**state, "positions": state["positions"][start:]}


def measured_yaw(frames: np.ndarray, config: DriveConfig) -> float:
    """Heading change (rad, left positive) over a clip from the road's direction in view: the last frame in
    which the road is found against the first (a view turned so far that the road left it keeps the turn it
    had shown); nan when the first frame shows no road. The road, not the skyline: at 32 x 32 the mountains
    are a blurred band two pixels high, which generated frames do not keep sharp enough to register."""
    headings = np.array([estimate_road_heading(frame, config) for frame in frames])
    found = np.flatnonzero(np.isfinite(headings))
    if found.size == 0 or found[0] != 0:
        return float("nan")
    return float(headings[found[-1]] - headings[0])


def action_to_video_metrics(
    pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True
) -> list[Metric]:
    """The same first frame driven with a left-turn and a right-turn action sequence: the fraction of
    generated views that turn the commanded way by at least a quarter of the commanded heading change (so a
    frozen view scores 0), beside chance (0.5) and the same measurement on the world's own renders of those
    actions; and the median measured heading change (a view that has lost the road can mislead the
    estimator, so a mean would follow its outliers). A clip with no road in its first frame counts as no turn."""
    world, drive = DriveWorld(config.drive), config.drive
    frames = drive.num_frames
    commanded = config.turn_yaw * (frames - 1)

    def turned(sign: float, yaw: float) -> int:
        return int(sign * yaw > 0.25 * commanded)

    def measured(frames: np.ndarray) -> float:
        return float(np.nan_to_num(measured_yaw(frames, drive)))  # no road in the first frame: no turn

    correct = truth_correct = total = 0
    yaws: dict[float, list[float]] = {1.0: [], -1.0: []}
    for index, seed in enumerate(tqdm(eval_seeds(config.clips), desc="eval action2video", disable=not progress)):
        for sign in (1.0, -1.0):
            actions = np.tile(np.float32([[sign * config.turn_yaw, config.turn_speed]]), (frames, 1))
            clip = world.render(seed, actions=actions)
            generated = pipe.action_to_video(clip.frames[0], actions, num_frames=frames, steps=config.steps,
                                             seed=config.seed + index).frames
            yaw = measured(generated)
            yaws[sign].append(yaw)
            correct += turned(sign, yaw)
            truth_correct += turned(sign, measured(clip.frames))
            total += 1
    return [
        Metric("action2video turns in the commanded direction (rate)", correct / total, 0.5, "chance", "higher",
               truth_correct / total),
        Metric(f"action2video median measured yaw, left turn (rad; commanded {commanded:+.2f})",
               float(np.median(yaws[1.0])), 0.0, "no turn", "higher"),
        Metric(f"action2video median measured yaw, right turn (rad; commanded {-commanded:+.2f})",
               float(np.median(yaws[-1.0])), 0.0, "no turn", "lower"),
    ]


def _dominant_shape(frames: np.ndarray) -> tuple[str, str] | None:
    """(colour, kind) of the palette colour with the most pixels over the clip, its kind the most frequent
    one detected for it; None when no shape is found."""
    pixels: dict[str, int] = {}
    kinds: dict[str, list[str]] = {}
    for frame in frames:
        for detection in detect_shapes(frame):
            pixels[detection.colour] = pixels.get(detection.colour, 0) + detection.num_pixels
            kinds.setdefault(detection.colour, []).append(detection.kind)
    if not pixels:
        return None
    colour = max(pixels, key=pixels.__getitem__)
    return colour, max(set(kinds[colour]), key=kinds[colour].count)


def _prompt_match(found: tuple[str, str] | None, state: dict) -> tuple[bool, bool]:
    """(colour matches, colour and kind match) of a dominant detection against a clip's shapes."""
    if found is None:
        return False, False
    colours = list(state["colours"])
    if found[0] not in colours:
        return False, False
    return True, found[1] == state["kinds"][colours.index(found[0])]


def text_to_video_metrics(
    pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True
) -> list[Metric]:
    """Held-out captions -> videos: the fraction whose dominant shape has a colour (and the kind) the prompt
    names, beside chance (a random palette colour / colour and kind) and the detector on the true clips."""
    world = ShapesWorld(config.shapes)
    generated_hits, truth_hits, named = [], [], []
    for index, seed in enumerate(tqdm(eval_seeds(config.clips), desc="eval text2video", disable=not progress)):
        clip = world.render(seed)
        named.append(len(clip.state["colours"]))
        generated = pipe.text_to_video(clip.caption, num_frames=len(clip.frames), steps=config.steps,
                                       seed=config.seed + index).frames
        generated_hits.append(_prompt_match(_dominant_shape(generated), clip.state))
        truth_hits.append(_prompt_match(_dominant_shape(clip.frames), clip.state))
    chance_colour = np.mean(named) / len(PALETTE)
    rates = np.mean(generated_hits, axis=0)
    truth = np.mean(truth_hits, axis=0)
    return [
        Metric("text2video dominant colour named in the prompt (rate)", float(rates[0]), chance_colour,
               "chance", "higher", float(truth[0])),
        Metric("text2video dominant colour and shape match the prompt (rate)", float(rates[1]),
               chance_colour / len(KINDS), "chance", "higher", float(truth[1])),
    ]


EVALUATIONS: dict[str, Callable[[WorldDreamerPipeline, EvalConfig, bool], list[Metric]]] = {
    "image2video": image_to_video_metrics,
    "action2video": action_to_video_metrics,
    "text2video": text_to_video_metrics,
}


def evaluate_pipeline(
    pipe: WorldDreamerPipeline, config: EvalConfig, tasks: Iterable[str] = tuple(EVALUATIONS), progress: bool = True
) -> list[Metric]:
    """Tokenizer metrics on held-out clips of both worlds, then each task's metrics."""
    clips = [ShapesWorld(config.shapes).render(seed).frames for seed in eval_seeds(config.clips)]
    clips += [DriveWorld(config.drive).render(seed).frames for seed in eval_seeds(config.clips)]
    metrics = tokenizer_metrics(pipe, clips)
    for task in tasks:
        if task not in EVALUATIONS:
            raise ValueError(f"unknown evaluation {task!r}; choose from {sorted(EVALUATIONS)}")
        metrics += EVALUATIONS[task](pipe, config, progress)
    return metrics


def format_metrics(metrics: list[Metric]) -> str:
    """A plain-text table: metric, model, baseline, whether the model beats it, the true clips' number."""
    rows = [("metric", "model", "baseline", "beats it", "true clips")]
    rows += [(m.name, f"{m.value:.3f}", f"{m.baseline:.3f} ({m.baseline_name})", "yes" if m.beats_baseline else "no",
              "-" if m.on_truth is None else f"{m.on_truth:.3f}") for m in metrics]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


@click.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A pipeline directory (the quickstart's OUT/pipeline, `wd train export`).")
@click.option("--clips", type=click.IntRange(min=1), default=EvalConfig.clips, show_default=True,
              help="Held-out clips per task.")
@click.option("--task", "tasks", type=click.Choice(list(EVALUATIONS)), multiple=True,
              help="Measure only these tasks (repeat the option; default: all).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override an EvalConfig field, e.g. shapes.max_shapes=2, drive.fov_degrees=60, turn_yaw=0.02.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the metrics as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def eval_command(checkpoint: Path, clips: int, tasks: tuple[str, ...], overrides: tuple[str, ...],
                 json_out: Path | None, device: str, no_progress: bool) -> None:
    """Measure a pipeline on held-out synthetic clips against simple baselines.

    The worlds are rendered at the pipeline's frame size and length (one large shape per shapes clip, as the
    quickstart trains); change them with --set.

    \b
    Example:
      wd eval --checkpoint wd-quickstart/pipeline
      wd eval --checkpoint runs/pipeline --task image2video --clips 32 --set shapes.max_shapes=3
    """
    with one_line_errors():
        pipe = WorldDreamerPipeline.from_pretrained(checkpoint, device=device)
        d = pipe.defaults
        shapes, drive = synthetic_worlds(d.height, d.width, d.num_frames)
        values = apply_overrides(to_plain(EvalConfig(shapes, drive, clips=clips)), list(overrides))
        config = from_dict(EvalConfig, values)
        metrics = evaluate_pipeline(pipe, config, tasks or tuple(EVALUATIONS), progress=not no_progress)
        if json_out is not None:
            write_metrics_json(metrics, json_out)
    click.echo(format_metrics(metrics))


def write_metrics_json(metrics: list[Metric], path: Path) -> None:
    """The metrics as a JSON list (every field, plus beats_baseline), written atomically."""
    rows = [{**dataclasses.asdict(metric), "beats_baseline": metric.beats_baseline} for metric in metrics]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rows, indent=2))
