"""Quality numbers on held-out synthetic clips (seeds never used in training), each beside a simple baseline.

What `wd quickstart` and `wd eval` report, all measured with the synthetic worlds' own detectors
(`wd_data.synthetic`): tokenizer PSNR/SSIM; PSNR and object-position error of image-to-video and prediction
(against copying the first / the last given frame), inpainting (against painting the box over), interpolation
(against blending the keyframes) and outpainting (against replicating the edge pixels), and for image-to-video
and inpainting whether the shapes keep their form; stylization's recolouring; the turn directions of
action-to-video, of text and actions together, and of rollouts three windows long, window by window (from the
road's heading in view); and text-to-video colour/shape agreement. Each number comes with a bootstrap interval
over its clips, and beats its baseline only when the whole interval does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click
import numpy as np
import torch
from tqdm.auto import tqdm
from wd_data.synthetic import (
    BACKGROUND,
    KINDS,
    PALETTE,
    Clip,
    DriveConfig,
    DriveWorld,
    ShapesConfig,
    ShapesWorld,
    colour_mask,
    detect_shapes,
    estimate_road_heading,
    eval_seeds,
    palette_labels,
)
from wd_tokenizer import evaluate as evaluate_tokenizer
from wd_tokenizer.io import atomic_write_text
from wd_tokenizer.metrics import psnr, ssim

from wd_cli.errors import one_line_errors
from wd_cli.media import fit_inside
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.train.configfile import apply_overrides, from_dict, to_plain
from wd_cli.windowing import Window, plan_windows


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
    interval: tuple[float, float] | None = None  # 95% bootstrap interval of `value` over the clips

    def __post_init__(self) -> None:
        # numpy scalars (from means) would make beats_baseline a numpy bool, which JSON refuses.
        self.value, self.baseline = float(self.value), float(self.baseline)
        self.on_truth = None if self.on_truth is None else float(self.on_truth)
        self.interval = None if self.interval is None else (float(self.interval[0]), float(self.interval[1]))

    @property
    def beats_baseline(self) -> bool:
        """True when the model is strictly better than the baseline; with an interval, only when the whole
        interval is (a difference the clips drawn could explain is not a win)."""
        low, high = self.interval if self.interval is not None else (self.value, self.value)
        return low > self.baseline if self.better == "higher" else high < self.baseline


def bootstrap_interval(
    values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, confidence: float = 0.95,
    resamples: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over per-clip `values` (resampling clips with replacement)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    picks = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    stats = np.array([statistic(row) for row in data[picks]])
    # inverted_cdf picks sampled values (no interpolation), so an infinite PSNR gives inf, not nan.
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2], method="inverted_cdf")
    return float(low), float(high)


def clip_metric(
    name: str, values: Sequence[float], baseline: float, baseline_name: str, better: Literal["higher", "lower"],
    on_truth: float | None = None, statistic: Callable[[np.ndarray], float] = np.mean,
) -> Metric:
    """A Metric from per-clip values: their `statistic` and its bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    return Metric(name, float(statistic(data)), baseline, baseline_name, better, on_truth,
                  bootstrap_interval(data, statistic))


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
    task_clips: dict[str, int] = field(default_factory=dict)  # clips for some tasks by name, instead of `clips`
    seed: int = 0  # generation seed of the first clip (clip i uses seed + i)
    turn_yaw: float = 0.1  # rad per frame of the left/right turn action sequences
    turn_speed: float = 6.0  # m/s of those sequences
    # Rollouts `rollout_windows` windows long turn the other way in each segment (the frames one window of a
    # window-by-window rollout commits: a steady turn would leave the road, and the view with it, after one
    # window); 0.06 rad a frame keeps the road in view (the detector reads 97% of the world's own segments, 0.1
    # rad 48%).
    rollout_windows: int = 3
    rollout_yaw: float = 0.06
    given_frames: int = 3  # frames prediction is given
    keyframe_every: int = 4  # interpolation: every k-th frame given, 2 * k + 1 frames (3 keyframes)
    steps: int | None = None  # decoding steps (None: the pipeline's default)

    def __post_init__(self) -> None:
        for name in ("clips", "rollout_windows", "given_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if set(self.task_clips) - set(EVALUATIONS) or min(self.task_clips.values(), default=1) < 1:
            raise ValueError(f"task_clips must map tasks of {sorted(EVALUATIONS)} to counts >= 1, got "
                             f"{self.task_clips}")
        if self.given_frames >= self.shapes.num_frames:
            raise ValueError(f"given_frames {self.given_frames} leaves no frame of {self.shapes.num_frames} to predict")
        if self.keyframe_every < 2:
            raise ValueError(f"keyframe_every must be >= 2, got {self.keyframe_every}")
        if not self.turn_yaw > 0 or not self.rollout_yaw > 0:
            raise ValueError(f"turn_yaw and rollout_yaw must be > 0, got {self.turn_yaw}, {self.rollout_yaw}")

    def seeds(self, task: str) -> range:
        """The held-out seeds `task` is measured on."""
        return eval_seeds(self.task_clips.get(task, self.clips))


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


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([rows.mean(), cols.mean()])


def _shifted(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """bool (H, W) mask moved by (rows, cols) pixels; what leaves the frame is dropped."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    source = mask[max(0, -rows) : height - max(0, rows), max(0, -cols) : width - max(0, cols)]
    out[max(0, rows) : max(0, rows) + source.shape[0], max(0, cols) : max(0, cols) + source.shape[1]] = source
    return out


def aligned_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """IoU of bool (H, W) `mask` with `reference` once their centroids are aligned (the best of the four
    whole-pixel shifts around the centroid difference, so sub-pixel positions cost nothing); 0 if either is
    empty. Measures shape, not place."""
    if not mask.any() or not reference.any():
        return 0.0
    offset = _centroid(reference) - _centroid(mask)
    best = 0.0
    for rows in {math.floor(offset[0]), math.ceil(offset[0])}:
        for cols in {math.floor(offset[1]), math.ceil(offset[1])}:
            moved = _shifted(mask, rows, cols)
            best = max(best, float((moved & reference).sum() / (moved | reference).sum()))
    return best


def _disc_like(mask: np.ndarray) -> np.ndarray:
    """A disc of the mask's area at its centroid: what a shape melted into a round blob looks like."""
    centre = _centroid(mask)
    rows, cols = np.indices(mask.shape)
    radius = math.sqrt(mask.sum() / math.pi)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def shape_ious(frames: np.ndarray, reference: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """(N, S) `aligned_iou` of each shape's colour mask in each frame uint8 (N, H, W, 3) against the same
    colour's mask in the reference frame uint8 (H, W, 3)."""
    references = [colour_mask(reference, colour) for colour in colours]
    return np.array([[aligned_iou(colour_mask(frame, colour), ref) for colour, ref in zip(colours, references,
                                                                                          strict=True)]
                     for frame in frames])


def _melted_iou(reference: np.ndarray, colours: Sequence[str]) -> float:
    """Mean IoU of each shape's mask in the reference frame with a disc of its area (the 'blob' baseline)."""
    masks = [colour_mask(reference, colour) for colour in colours]
    return float(np.mean([aligned_iou(_disc_like(mask), mask) if mask.any() else 0.0 for mask in masks]))


class _ShapesScores:
    """Per-clip PSNR and shape-position error of a task's frames beside its baseline's (and the detector's error
    on the true frames), over chosen frames; for PSNR optionally only over chosen columns. With `shapes_kept`,
    also whether the shapes keep their form: `shape_ious` of the scored frames after the first against the true
    first frame, beside a shape melted into a disc."""

    def __init__(self, config: EvalConfig, shapes_kept: bool = False) -> None:
        # A shape that is not found at all is as wrong as a guess in the far corner: half the image diagonal.
        self.miss = 0.5 * math.hypot(config.shapes.height, config.shapes.width)
        self.shapes_kept = shapes_kept
        self.rows: list[tuple[float, ...]] = []

    def add(self, generated: np.ndarray, baseline: np.ndarray, clip: Clip, frames: np.ndarray,
            columns: np.ndarray | slice = slice(None)) -> None:
        """Score generated and baseline uint8 (N, H, W, 3) against clip at frame indices `frames`."""
        truth = _pixels(clip.frames[frames][:, :, columns])
        state = {**clip.state, "positions": clip.state["positions"][frames]}
        error = [_position_errors(video[frames], state, self.miss).mean()
                 for video in (generated, baseline, clip.frames)]
        row = (psnr(_pixels(generated[frames][:, :, columns]), truth),
               psnr(_pixels(baseline[frames][:, :, columns]), truth), *error)
        if self.shapes_kept:
            later, colours = frames[frames > 0], list(clip.state["colours"])
            row += (shape_ious(generated[later], clip.frames[0], colours).mean(),
                    shape_ious(clip.frames[later], clip.frames[0], colours).mean(), _melted_iou(clip.frames[0], colours))
        self.rows.append(row)

    def metrics(self, task: str, scored: str, baseline: str) -> list[Metric]:
        """The PSNR row and the position-error row, `scored` naming what was scored (and the shape-IoU row)."""
        columns = np.array(self.rows).T
        metrics = [clip_metric(f"{task} PSNR, {scored} (dB)", columns[0], np.mean(columns[1]), baseline, "higher"),
                   clip_metric(f"{task} position error, {scored} (px)", columns[2], np.mean(columns[3]), baseline,
                               "lower", np.mean(columns[4]))]
        if self.shapes_kept:
            metrics.append(clip_metric(f"{task} shape IoU with frame 1, {scored}", columns[5], np.mean(columns[7]),
                                       "melted into a disc", "higher", np.mean(columns[6])))
        return metrics


def image_to_video_metrics(
    pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True
) -> list[Metric]:
    """First frame + caption -> video, scored on frames 2..N against the ground truth and against copying
    the first frame N times (PSNR, and the shapes' position error from the world state), and the shapes' form."""
    world, scores = ShapesWorld(config.shapes), _ShapesScores(config, shapes_kept=True)
    for index, seed in enumerate(tqdm(config.seeds("image2video"), desc="eval image2video", disable=not progress)):
        clip = world.render(seed)
        generated = pipe.image_to_video(clip.frames[0], prompt=clip.caption, num_frames=len(clip.frames),
                                        steps=config.steps, seed=config.seed + index).frames
        copied = np.repeat(clip.frames[:1], len(clip.frames), axis=0)
        scores.add(generated, copied, clip, np.arange(1, len(clip.frames)))
    return scores.metrics("image2video", "frames 2..N", "copy first frame")


def inpaint_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The centre box (top, left, bottom, right) that the inpainting evaluation and the report regenerate:
    half the frame's height and width."""
    return height // 4, width // 4, 3 * height // 4, 3 * width // 4


def inpaint_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """Held-out clips with the centre box regenerated under their captions, scored on every frame against
    painting the box with the background (a shape inside it is lost), and the shapes' form."""
    world, scores = ShapesWorld(config.shapes), _ShapesScores(config, shapes_kept=True)
    top, left, bottom, right = inpaint_box(config.shapes.height, config.shapes.width)
    for index, seed in enumerate(tqdm(config.seeds("inpaint"), desc="eval inpaint", disable=not progress)):
        clip = world.render(seed)
        generated = pipe.inpaint(clip.frames, box=(top, left, bottom, right), prompt=clip.caption,
                                 steps=config.steps, seed=config.seed + index).frames
        blank = clip.frames.copy()
        blank[:, top:bottom, left:right] = BACKGROUND
        scores.add(generated, blank, clip, np.arange(len(clip.frames)))
    return scores.metrics("inpaint", "centre box regenerated", "box painted background")


def recoloured(caption: str, colour: str) -> str:
    """The caption with its first colour word replaced by `colour` (a stylization prompt)."""
    for name in PALETTE:
        if name in caption.split():
            return caption.replace(name, colour, 1)
    return caption


def _stylized_frames(frames: np.ndarray, state: dict, source: str, target: str) -> np.ndarray:
    """bool (N,): frames where the first shape shows in `target` near its true centre (within its size) and
    `target` outweighs what remains of the `source` colour."""
    hits = []
    for frame, centre in zip(frames, state["positions"][:, 0], strict=True):
        labels = palette_labels(frame)
        new, old = labels == list(PALETTE).index(target), labels == list(PALETTE).index(source)
        near = new.sum() >= 4 and math.dist(_centroid(new)[::-1] + 0.5, centre) <= state["sizes"][0]
        hits.append(bool(near and new.sum() > old.sum()))
    return np.array(hits)


def stylize_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """Held-out clips restyled under their caption with the first shape's colour replaced by another: the
    fraction of frames where the new colour has replaced the old one on the shape's true track, beside
    recolouring with a random other palette colour (chance)."""
    world = ShapesWorld(config.shapes)
    rates = []
    for index, seed in enumerate(tqdm(config.seeds("stylize"), desc="eval stylize", disable=not progress)):
        clip = world.render(seed)
        source = str(clip.state["colours"][0])
        others = [name for name in PALETTE if name != source]
        target = others[seed % len(others)]
        generated = pipe.stylize(clip.frames, recoloured(clip.caption, target), steps=config.steps,
                                 seed=config.seed + index).frames
        rates.append(_stylized_frames(generated, clip.state, source, target).mean())
    return [clip_metric("stylize: prompt's colour on the shape's track (rate of frames)", rates,
                        1 / (len(PALETTE) - 1), "chance", "higher")]


def prediction_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """The first `given_frames` frames + caption -> the clip, scored on the frames after them against copying
    the last given frame."""
    world, scores, given = ShapesWorld(config.shapes), _ShapesScores(config), config.given_frames
    for index, seed in enumerate(tqdm(config.seeds("predict"), desc="eval predict", disable=not progress)):
        clip = world.render(seed)
        generated = pipe.image_to_video(clip.frames[:given], prompt=clip.caption, num_frames=len(clip.frames),
                                        steps=config.steps, seed=config.seed + index).frames
        copied = np.concatenate([clip.frames[:given], np.repeat(clip.frames[given - 1 : given],
                                                                len(clip.frames) - given, axis=0)])
        scores.add(generated, copied, clip, np.arange(given, len(clip.frames)))
    return scores.metrics("predict", f"frames {given + 1}..N from {given}", "copy last given frame")


def blend_keyframes(keyframes: np.ndarray, every: int) -> np.ndarray:
    """uint8 (M, H, W, 3) keyframes -> ((M - 1) * every + 1, H, W, 3): each frame between two keyframes the linear
    blend of them (interpolation's baseline)."""
    weights = np.arange(every)[:, None, None, None] / every  # (every, 1, 1, 1)
    first, second = keyframes[:-1, None].astype(np.float64), keyframes[1:, None].astype(np.float64)
    between = ((1 - weights) * first + weights * second).round().astype(np.uint8)  # (M - 1, every, H, W, 3)
    return np.concatenate([between.reshape(-1, *keyframes.shape[1:]), keyframes[-1:]])


def interpolation_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """Every `keyframe_every`-th frame of a clip of 3 keyframes given -> the frames between, scored against
    blending the keyframes linearly."""
    every = config.keyframe_every
    world = ShapesWorld(dataclasses.replace(config.shapes, num_frames=2 * every + 1))
    scores = _ShapesScores(config)
    for index, seed in enumerate(tqdm(config.seeds("interpolate"), desc="eval interpolate", disable=not progress)):
        clip = world.render(seed)
        keyframes = clip.frames[::every]
        generated = pipe.interpolate(keyframes, every, prompt=clip.caption, steps=config.steps,
                                     seed=config.seed + index).frames
        between = np.flatnonzero(np.arange(len(clip.frames)) % every)
        scores.add(generated, blend_keyframes(keyframes, every), clip, between)
    return scores.metrics("interpolate", f"frames between keyframes every {every}", "linear blend")


def outpainting_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """The middle half of each frame's columns given -> the clip widened back to its width, scored on every frame
    (PSNR on the generated sides) against replicating the strip's edge pixels."""
    world, scores = ShapesWorld(config.shapes), _ShapesScores(config)
    width = config.shapes.width
    sides = np.ones(width, dtype=bool)
    sides[width // 4 : 3 * width // 4] = False
    for index, seed in enumerate(tqdm(config.seeds("outpaint"), desc="eval outpaint", disable=not progress)):
        clip = world.render(seed)
        strip = clip.frames[:, :, ~sides]
        generated = pipe.outpaint(strip, prompt=clip.caption, steps=config.steps, seed=config.seed + index).frames
        replicated = fit_inside(strip, clip.frames.shape[1:3])[0].numpy()
        scores.add(generated, replicated, clip, np.arange(len(clip.frames)), sides)
    return scores.metrics("outpaint", "middle half given, sides generated", "edge replication")


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


def _turned(sign: float, yaw: float, commanded: float) -> bool:
    """Whether a measured heading change turned the `sign` way by at least a quarter of the commanded change (so
    a frozen view scores no turn); nan (no road to measure from) is no turn."""
    return bool(sign * np.nan_to_num(yaw) > 0.25 * commanded)


def _turn_metrics(task: str, config: EvalConfig, generate: Callable[[Clip, np.ndarray, int], np.ndarray],
                  progress: bool) -> list[Metric]:
    """A left and a right turn from each held-out drive: `generate(first_frame, actions, index)` -> frames; the
    fraction of generated views that turn the commanded way (`_turned`), beside chance and the same measurement
    on the world's own renders of those actions; and the median measured heading change per direction (a view
    that has lost the road can mislead the estimator, so a mean would follow its outliers)."""
    world, drive = DriveWorld(config.drive), config.drive
    commanded = config.turn_yaw * (drive.num_frames - 1)
    hits, truth_hits = [], []
    yaws: dict[float, list[float]] = {1.0: [], -1.0: []}
    for index, seed in enumerate(tqdm(config.seeds(task), desc=f"eval {task}", disable=not progress)):
        for sign in (1.0, -1.0):
            actions = np.tile(np.float32([[sign * config.turn_yaw, config.turn_speed]]), (drive.num_frames, 1))
            clip = world.render(seed, actions=actions)
            yaw = measured_yaw(generate(clip, actions, index), drive)
            yaws[sign].append(float(np.nan_to_num(yaw)))  # no road in the first frame: no turn
            hits.append(_turned(sign, yaw, commanded))
            truth_hits.append(_turned(sign, measured_yaw(clip.frames, drive), commanded))
    return [
        clip_metric(f"{task} turns in the commanded direction (rate)", hits, 0.5, "chance", "higher",
                    np.mean(truth_hits)),
        clip_metric(f"{task} median measured yaw, left turn (rad; commanded {commanded:+.2f})", yaws[1.0], 0.0,
                    "no turn", "higher", statistic=np.median),
        clip_metric(f"{task} median measured yaw, right turn (rad; commanded {-commanded:+.2f})", yaws[-1.0], 0.0,
                    "no turn", "lower", statistic=np.median),
    ]


def action_to_video_metrics(
    pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True
) -> list[Metric]:
    """The same first frame driven with a left-turn and a right-turn action sequence (`_turn_metrics`)."""

    def generate(clip: Clip, actions: np.ndarray, index: int) -> np.ndarray:
        return pipe.action_to_video(clip.frames[0], actions, num_frames=len(actions), steps=config.steps,
                                    seed=config.seed + index).frames

    return _turn_metrics("action2video", config, generate, progress)


def text_and_actions_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """No frame given: the drive's caption and its left- or right-turn actions together in one call
    (`_turn_metrics`; the first generated frame is the reference the turn is measured from)."""

    def generate(clip: Clip, actions: np.ndarray, index: int) -> np.ndarray:
        return pipe.text_to_video(clip.caption, actions, steps=config.steps, seed=config.seed + index).frames

    return _turn_metrics("text+actions", config, generate, progress)


def rollout_actions(config: EvalConfig, windows: list[Window], first_sign: float, frames: int) -> np.ndarray:
    """float32 (frames, 2): turns of rollout_yaw that change direction with every window's segment, `first_sign`
    first (left positive). Window k's sign drives actions [k.new - 1, k.end - 1), the moves into its frames."""
    actions = np.tile(np.float32([[first_sign * config.rollout_yaw, config.turn_speed]]), (frames, 1))
    for number, window in enumerate(windows):
        stop = frames if number == len(windows) - 1 else window.end - 1  # the last row continues the last turn
        actions[window.new - 1 : stop, 0] *= (-1) ** number
    return actions


def long_rollout_metrics(pipe: WorldDreamerPipeline, config: EvalConfig, progress: bool = True) -> list[Metric]:
    """Action-to-video rollouts `rollout_windows` times the window long, their turn changing direction with every
    segment (the frames `plan_windows` gives each window of the rollout): per segment index, the fraction of
    rollouts whose frames turn the commanded way (`_turned`, from the frame before the segment's first to its
    last), beside chance and the world's own renders."""
    window, context = pipe.defaults.num_frames, pipe.defaults.context_frames
    frames = config.rollout_windows * window
    drive = dataclasses.replace(config.drive, num_frames=frames)
    world = DriveWorld(drive)
    windows = plan_windows([True] + [False] * (frames - 1), window, context)
    hits: list[list[bool]] = [[] for _ in windows]
    truth_hits: list[list[bool]] = [[] for _ in windows]
    seeds = config.seeds("long-rollout")
    for index, seed in enumerate(tqdm(seeds, desc="eval long-rollout", disable=not progress)):
        for sign in (1.0, -1.0):
            actions = rollout_actions(config, windows, sign, frames)
            clip = world.render(seed, actions=actions)
            generated = pipe.action_to_video(clip.frames[0], actions, steps=config.steps,
                                             seed=config.seed + index).frames
            for videos, per_window in ((generated, hits), (clip.frames, truth_hits)):
                headings = [estimate_road_heading(frame, drive) for frame in videos]
                for number, span in enumerate(windows):
                    commanded = config.rollout_yaw * (span.end - span.new)
                    turn = headings[span.end - 1] - headings[span.new - 1]
                    per_window[number].append(_turned(sign * (-1) ** number, turn, commanded))
    return [clip_metric(f"long rollout ({frames} frames, windows of {window}): turns the commanded way, segment "
                        f"{number + 1} of {len(windows)} (rate)", hits[number], 0.5, "chance", "higher",
                        np.mean(truth_hits[number]))
            for number in range(len(windows))]


def _dominant_shape(frames: np.ndarray) -> tuple[str, str] | None:
    """(colour, kind) of the palette colour with the most pixels over the clip, its kind the most frequent
    one detected for it (of kinds detected equally often, the one seen first); None when no shape is found."""
    pixels: dict[str, int] = {}
    kinds: dict[str, list[str]] = {}
    for frame in frames:
        for detection in detect_shapes(frame):
            pixels[detection.colour] = pixels.get(detection.colour, 0) + detection.num_pixels
            kinds.setdefault(detection.colour, []).append(detection.kind)
    if not pixels:
        return None
    colour = max(pixels, key=pixels.__getitem__)
    # Counter keeps first-seen order among equal counts; max over a set broke ties by string hashes, which
    # differ per process (PYTHONHASHSEED), so one pipeline's score moved between runs.
    return colour, Counter(kinds[colour]).most_common(1)[0][0]


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
    for index, seed in enumerate(tqdm(config.seeds("text2video"), desc="eval text2video", disable=not progress)):
        clip = world.render(seed)
        named.append(len(clip.state["colours"]))
        generated = pipe.text_to_video(clip.caption, num_frames=len(clip.frames), steps=config.steps,
                                       seed=config.seed + index).frames
        generated_hits.append(_prompt_match(_dominant_shape(generated), clip.state))
        truth_hits.append(_prompt_match(_dominant_shape(clip.frames), clip.state))
    chance_colour = np.mean(named) / len(PALETTE)
    hits, truth = np.array(generated_hits, dtype=float), np.mean(truth_hits, axis=0)
    return [
        clip_metric("text2video dominant colour named in the prompt (rate)", hits[:, 0], chance_colour,
                    "chance", "higher", truth[0]),
        clip_metric("text2video dominant colour and shape match the prompt (rate)", hits[:, 1],
                    chance_colour / len(KINDS), "chance", "higher", truth[1]),
    ]


EVALUATIONS: dict[str, Callable[[WorldDreamerPipeline, EvalConfig, bool], list[Metric]]] = {
    "image2video": image_to_video_metrics,
    "inpaint": inpaint_metrics,
    "stylize": stylize_metrics,
    "action2video": action_to_video_metrics,
    "text2video": text_to_video_metrics,
    "predict": prediction_metrics,
    "interpolate": interpolation_metrics,
    "outpaint": outpainting_metrics,
    "text+actions": text_and_actions_metrics,
    "long-rollout": long_rollout_metrics,
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


def format_value(metric: Metric) -> str:
    """The model's number with its interval, e.g. '0.953 [0.891, 1.000]'."""
    if metric.interval is None:
        return f"{metric.value:.3f}"
    return f"{metric.value:.3f} [{metric.interval[0]:.3f}, {metric.interval[1]:.3f}]"


def format_metrics(metrics: list[Metric]) -> str:
    """A plain-text table: metric, model, baseline, whether the model beats it, the true clips' number."""
    rows = [("metric", "model [95% interval]", "baseline", "beats it", "true clips")]
    rows += [(m.name, format_value(m), f"{m.baseline:.3f} ({m.baseline_name})", "yes" if m.beats_baseline else "no",
              "-" if m.on_truth is None else f"{m.on_truth:.3f}") for m in metrics]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


@click.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A pipeline directory (the quickstart's OUT/pipeline, `wd train export`).")
@click.option("--clips", type=click.IntRange(min=1), default=EvalConfig.clips, show_default=True,
              help="Held-out clips per task (task_clips.<task> overrides it for one).")
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
      wd eval --checkpoint runs/pipeline --task long-rollout --set task_clips.long-rollout=16 --set rollout_windows=4
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
