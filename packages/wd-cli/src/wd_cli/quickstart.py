"""`wd quickstart`: the whole world model on a CPU in minutes, with no download.

Stages: render the synthetic worlds -> train the small tokenizer -> tokenize clips into token caches -> train a
small STPT on both worlds (captions through the hash text encoder, drive actions) -> save the pipeline -> run
every task on held-out seeds -> measure quality against baselines -> write videos, a contact sheet and
`index.html`. Every stage that trains is resumable and skipped when its result exists, so a second run reuses
the trained models. `minutes` is a deadline for the whole run: each training stage gets a share of the time left
and stops when its share is spent (its learning rate annealed by then), however fast the machine runs meanwhile.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import numpy as np
import torch
from tqdm.auto import tqdm
from wd_data import write_token_cache
from wd_data.synthetic import (
    PALETTE,
    DriveConfig,
    DriveDataset,
    DriveWorld,
    ShapesConfig,
    ShapesDataset,
    ShapesWorld,
    eval_seeds,
)
from wd_stpt import STPT
from wd_tokenizer import VQGAN, LossConfig, TrainConfig, frame_batches, get_config, train_vqgan

from wd_cli.atomic import atomic_directory
from wd_cli.devices import prefers_bf16
from wd_cli.errors import one_line_errors
from wd_cli.evaluation import (
    EvalConfig,
    Metric,
    evaluate_pipeline,
    format_metrics,
    inpaint_box,
    recoloured,
    synthetic_worlds,
    write_metrics_json,
)
from wd_cli.media import fit_inside
from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.report import TaskResult, contact_sheet, write_index, write_task_media
from wd_cli.text_encoders import HashTextEncoder
from wd_cli.train import (
    CheckpointSection,
    DataSection,
    LoggingSection,
    LossSection,
    ModelSection,
    OptimSection,
    SourceConfig,
    STPTRunConfig,
    TrainSection,
    train_stpt,
)


@dataclass
class QuickstartConfig:
    """What the quickstart builds and how long it may train; the defaults fit 15 minutes on a 2-core CPU."""

    out_dir: Path = Path("wd-quickstart")
    minutes: float = 14.0  # wall-clock budget of the whole run; the training stages keep deadlines inside it
    size: int = 32  # frame height and width in pixels
    num_frames: int = 8  # frames per clip, the STPT window
    train_clips: int = 1024  # clips per world in the token caches
    tokenizer_clips: int = 256  # clips per world whose frames train the tokenizer
    eval_clips: int = 32  # held-out clips per measured task (with 16 the image2video verdict moved with the clips)
    text_dim: int = 64
    seed: int = 0
    # "auto": bf16 on a CPU with bf16 units (wd_cli.devices.prefers_bf16), else fp32; "fp32": the path of every CPU
    # before bf16 was used (kept to measure against).
    precision: Literal["auto", "fp32"] = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        for name in ("train_clips", "tokenizer_clips", "eval_clips", "text_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size % 8 or self.size < 16:
            raise ValueError(f"size must be a multiple of 8 and >= 16 (4x downsampling, windows of 2), got {self.size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.precision not in ("auto", "fp32"):
            raise ValueError(f"precision must be 'auto' or 'fp32', got {self.precision!r}")

    @property
    def bf16(self) -> bool:
        """Whether the training stages and generation run in bf16."""
        return self.precision == "auto" and prefers_bf16(torch.device("cpu"))

    @property
    def shapes(self) -> ShapesConfig:
        return synthetic_worlds(self.size, self.size, self.num_frames)[0]

    @property
    def drive(self) -> DriveConfig:
        return synthetic_worlds(self.size, self.size, self.num_frames)[1]


# Share of the training time for the tokenizer; the STPT (the larger model of the two) trains for the rest. 0.2
# (more STPT steps, a tokenizer 2 dB worse) lost image-to-video's shapes and text-to-video (one run).
TOKENIZER_SHARE = 0.28
# Seconds kept free at the end for the token caches and for the tasks, the evaluation and the report (about half
# of it when the machine is not shared), so that they finish inside `minutes` even on a slowed machine.
CACHE_SECONDS, FINAL_SECONDS = 45.0, 150.0

# Measured on the synthetic worlds (docs/benchmarks.md, quickstart section). The patch encoder gives a plain
# background one code (the conv encoder: 27 codes, flipping as a shape moves nearby, noise the STPT had to learn).
TOKENIZER = "f4-patch"
# 125 FSQ codes (levels 5x5x5) instead of the preset's 1,000: the STPT has fewer codes to tell apart and a smaller
# head. Three quickstarts each (docs/benchmarks.md, "Codebook size"): 240 codes (8x6x5) kept image-to-video's shapes
# better than 1,000 on every seed; 125 then held stylization and the turns on every seed (240: one and two of three)
# and raised inpainting's shapes and text-to-video on two seeds, at ~0.45 dB of image-to-video PSNR (its +1 dB
# goal lost on every seed).
TOKENIZER_OVERRIDES = dict(fsq_levels=[5, 5, 5])
TOKENIZER_TRAINING = dict(lr=5e-4, betas=(0.9, 0.99), weight_decay=0.0, batch_size=8, max_steps=4000)
# patch_stride 2: the paper's windows (a quarter of each frame). One window per clip (stride 1) kept shapes better
# at equal steps but costs 1.4x per step, and within the quickstart's minutes it lost on PSNR, and at 125 codes on
# every number (docs/benchmarks.md, quickstart section).
# Width against depth and the peak learning rate, each at equal time on one quickstart's caches: width 256 at depth
# 2, width 192 and depth 6 all lost; 4e-3 and 2e-3 (the first build's) lost image-to-video's track to 1e-3 and 5e-4,
# and 5e-4 kept shapes best (docs/benchmarks.md, "Model shape and learning rate").
STPT_MODEL = dict(width=128, depth=4, num_heads=4, action_dim=2, patch_stride=2)
STPT_TRAINING = dict(lr=5e-4, warmup_steps=100, batch_size=8, max_steps=20_000)
# Micro-batches per cache: image-to-video's motion needs more steps than action-to-video's turns (1:1 lost
# to copying the first frame in two of three runs, 2:1 left the turns unlearnt in one of three).
SOURCE_WEIGHTS = {"shapes": 1.5, "drive": 1.0}
# Stylization redraws 75% of the tokens: at 50% the kept half anchored the old colour (0.41 of frames recoloured on
# validation clips, 0.73 at 75%; guidance 5 instead of 2 fell to 0.24-0.29).
# Plain guidance (no `plausibility`): on the held-out clips of three quickstart pipelines, plausibility 0.05 raised
# image2video's PSNR by 1.7-2.6 dB and its shape IoU, but pulled tokens towards the background, so shapes went
# missing: position error and text2video colour + shape got worse on two of three (docs/benchmarks.md).
# Guidance 1.5, not 2: with 125 codes, on the validation clips of four quickstart pipelines, it grew the shapes
# less (image-to-video +0.56 dB, shape IoU +0.025), kept text2video and stylization, and cost 0.2 px of position
# error; 1 and 0.5 lost the track or text2video. On the held-out clips of six pipelines image-to-video's two goals
# held together on four at 1.5, on two at 2 (docs/benchmarks.md, "Guidance at 125 codes").
SAMPLING = dict(steps=10, guidance_scale=1.5, temperature=0.7, choice_temperature=2.0, stylize_mask_ratio=0.75)
CONTEXT_FRAMES = 2  # rollout windows (and spans of long edits) continue from the last 2 frames
# Held-out clips of the tasks past the paper's five, fewer than `eval_clips` (at most that many): each clip costs
# one or two windows, a long rollout's eight (two drives of four windows), and the quickstart must stay near its
# time.
EXTRA_TASK_CLIPS = {"predict": 8, "interpolate": 8, "outpaint": 8, "text+actions": 8, "long-rollout": 4}


class Deadline:
    """The quickstart's end, `minutes` after it was made; `training_seconds` is what is left for training once
    the stages that follow are given their reserved time."""

    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + 60 * minutes

    def training_seconds(self, reserved: float) -> float:
        """Seconds left before the end minus `reserved` (at least one second, so a late stage still runs a step)."""
        return max(1.0, self.end - time.monotonic() - reserved)


def _stage(config: QuickstartConfig, text: str) -> None:
    if config.progress:
        click.secho(text, bold=True, err=True)


def tokenizer_stage(config: QuickstartConfig, deadline: Deadline) -> VQGAN:
    """The quickstart's tokenizer (TOKENIZER) trained on frames of both worlds for its share of the training time
    (out_dir/tokenizer once done)."""
    final = config.out_dir / "tokenizer"
    if final.is_dir():
        return VQGAN.from_pretrained(final).eval()
    clips = [ShapesWorld(config.shapes).render(seed).frames for seed in range(config.tokenizer_clips)]
    clips += [DriveWorld(config.drive).render(seed).frames for seed in range(config.tokenizer_clips)]
    batches = frame_batches(np.concatenate(clips), TOKENIZER_TRAINING["batch_size"], seed=config.seed)
    torch.manual_seed(config.seed)
    model = VQGAN(get_config(TOKENIZER, **TOKENIZER_OVERRIDES))
    budget = TOKENIZER_SHARE * deadline.training_seconds(CACHE_SECONDS + FINAL_SECONDS)
    train = TrainConfig(steps=TOKENIZER_TRAINING["max_steps"], lr=TOKENIZER_TRAINING["lr"],
                        betas=TOKENIZER_TRAINING["betas"], weight_decay=TOKENIZER_TRAINING["weight_decay"],
                        checkpoint_every=500, log_every=50, seed=config.seed, loss=LossConfig(disc_start=10**9),
                        time_budget_minutes=budget / 60, mixed_precision="bf16" if config.bf16 else "no")
    model = train_vqgan(model, batches, train, config.out_dir / "runs" / "tokenizer", progress=config.progress)
    with atomic_directory(final) as staging:
        model.save_pretrained(staging)
    return model


def token_cache_stage(config: QuickstartConfig, tokenizer: VQGAN, text_encoder: HashTextEncoder) -> list[Path]:
    """Token caches of the training clips of both worlds. Shapes clips keep their captions' embeddings; drive
    clips are stored without text, because their captions name the turn and action-to-video must follow the
    actions alone (as the paper's nuScenes model does)."""
    metadata = {"codebook_size": tokenizer.codebook_size, "tokenizer": TOKENIZER}
    seeds = range(config.train_clips)
    sources = [("shapes", ShapesDataset(config.shapes, seeds), text_encoder.embed),
               ("drive", DriveDataset(config.drive, seeds), lambda _caption: text_encoder.embed(""))]
    with torch.no_grad():
        return [write_token_cache(dataset, tokenizer.encode_video, config.out_dir / "caches" / name,
                                  encode_text=encode_text, metadata=metadata, progress=config.progress)
                for name, dataset, encode_text in sources]


def stpt_run_config(config: QuickstartConfig, caches: list[Path], minutes: float) -> STPTRunConfig:
    """Both token caches at SOURCE_WEIGHTS; AdamW with warmup and cosine decay over `minutes` of training."""
    return STPTRunConfig(
        data=DataSection(sources=[SourceConfig("token_cache", path=str(cache), weight=SOURCE_WEIGHTS[cache.name])
                                  for cache in caches],
                         batch_size=STPT_TRAINING["batch_size"]),
        # Drive actions are (yaw change rad, speed m/s): scaled by the largest yaw change and 10 m/s, or the
        # yaw would reach the action MLP ~100x smaller than the speed.
        model=ModelSection(preset="tiny", overrides=dict(STPT_MODEL, action_scale=[config.drive.max_yaw_change,
                                                                                    10.0])),
        # Image-to-video and action-to-video start from "first frame known, the rest masked": the prefix mask.
        loss=LossSection(mask_shared=0.4, mask_prefix=0.5, mask_box=0.1),
        optim=OptimSection(lr=STPT_TRAINING["lr"], warmup_steps=STPT_TRAINING["warmup_steps"]),
        train=TrainSection(steps=STPT_TRAINING["max_steps"], seed=config.seed, time_budget_minutes=minutes,
                           mixed_precision="bf16" if config.bf16 else "no"),
        checkpoint=CheckpointSection(every=500, keep=2),
        logging=LoggingSection(every=25),
    )


def stpt_stage(config: QuickstartConfig, caches: list[Path], deadline: Deadline) -> STPT:
    """The STPT trained on both caches until the training deadline (resumes an interrupted run)."""
    minutes = deadline.training_seconds(FINAL_SECONDS) / 60
    return train_stpt(stpt_run_config(config, caches, minutes), config.out_dir / "runs" / "stpt",
                      progress=config.progress)


def build_pipeline(config: QuickstartConfig, deadline: Deadline) -> WorldDreamerPipeline:
    """Train what is missing (tokenizer, caches, STPT) within `deadline` and save out_dir/pipeline; load it when
    it exists."""
    pipeline_dir = config.out_dir / "pipeline"
    if pipeline_dir.is_dir():
        _stage(config, f"Reusing the trained pipeline in {pipeline_dir}")
        return WorldDreamerPipeline.from_pretrained(pipeline_dir, dtype="bf16" if config.bf16 else "fp32")
    training = deadline.training_seconds(CACHE_SECONDS + FINAL_SECONDS) / 60
    _stage(config, f"[1/5] Tokenizer: {TOKENIZER} on {2 * config.tokenizer_clips} synthetic clips "
                   f"(~{TOKENIZER_SHARE * training:.1f} min)")
    tokenizer = tokenizer_stage(config, deadline)
    text_encoder = HashTextEncoder(dim=config.text_dim, seed=config.seed)
    _stage(config, f"[2/5] Token caches: {config.train_clips} clips per world")
    caches = token_cache_stage(config, tokenizer, text_encoder)
    _stage(config, f"[3/5] STPT on both worlds (~{deadline.training_seconds(FINAL_SECONDS) / 60:.1f} min)")
    stpt = stpt_stage(config, caches, deadline)
    defaults = PipelineDefaults(**SAMPLING, num_frames=config.num_frames, height=config.size, width=config.size,
                                fps=config.shapes.fps, context_frames=min(CONTEXT_FRAMES, config.num_frames - 1))
    pipeline = WorldDreamerPipeline(tokenizer, stpt, text_encoder, defaults)
    pipeline.to("cpu", "bf16" if config.bf16 else "fp32")
    pipeline.save_pretrained(pipeline_dir)
    return pipeline


def run_tasks(pipeline: WorldDreamerPipeline, config: QuickstartConfig) -> list[TaskResult]:
    """Every task on one held-out clip each (seeds after the evaluation ones)."""
    seed = eval_seeds(config.eval_clips + 1)[-1]
    shapes = ShapesWorld(config.shapes).render(seed)
    n, every = config.num_frames, EvalConfig.keyframe_every
    long_shapes = ShapesWorld(dataclasses.replace(config.shapes, num_frames=2 * every + 1)).render(seed)
    yaw, speed = EvalConfig.turn_yaw, EvalConfig.turn_speed
    turn = np.tile(np.float32([[yaw, speed]]), (2 * n - pipeline.defaults.context_frames, 1))
    drive = DriveWorld(dataclasses.replace(config.drive, num_frames=len(turn))).render(seed, actions=turn)
    drive_caption = DriveWorld(config.drive).render(seed, actions=turn[:n]).caption
    box = inpaint_box(config.size, config.size)
    quarter = config.size // 4
    strip = shapes.frames[:, :, quarter : 3 * quarter]
    style = "blue" if "blue" not in shapes.caption else "red"
    given = EvalConfig.given_frames
    jobs = [
        ("text2video", f"prompt: {shapes.caption!r}", None, lambda: pipeline.text_to_video(shapes.caption)),
        ("image2video", f"first frame + prompt {shapes.caption!r}", shapes.frames,
         lambda: pipeline.image_to_video(shapes.frames[0], prompt=shapes.caption)),
        ("predict", f"the first {given} frames + prompt {shapes.caption!r}", shapes.frames,
         lambda: pipeline.image_to_video(shapes.frames[:given], prompt=shapes.caption)),
        ("interpolate", f"every {every}th of {len(long_shapes.frames)} frames given (overlapping windows decoded "
         "together)", long_shapes.frames,
         lambda: pipeline.interpolate(long_shapes.frames[::every], every, long_shapes.caption)),
        ("inpaint", f"box {box} (top, left, bottom, right) regenerated, prompt {shapes.caption!r}", shapes.frames,
         lambda: pipeline.inpaint(shapes.frames, box=box, prompt=shapes.caption)),
        ("outpaint", "the middle half of the columns given (input: its edges replicated), the sides generated",
         fit_inside(strip, (config.size, config.size))[0].numpy(),
         lambda: pipeline.outpaint(strip, prompt=shapes.caption)),
        ("stylize", f"{pipeline.defaults.stylize_mask_ratio:.0%} of the tokens redrawn under "
         f"{recoloured(shapes.caption, style)!r}", shapes.frames,
         lambda: pipeline.stylize(shapes.frames, recoloured(shapes.caption, style))),
        ("action2video", f"first frame + a left turn (yaw {yaw:+.2f} rad, {speed:g} m/s per frame), {len(turn)} frames "
         f"rolled out in windows of {n}", drive.frames,
         lambda: pipeline.action_to_video(drive.frames[0], turn)),
        ("text+actions", f"no frame: prompt {drive_caption!r} and a left turn together", drive.frames[:n],
         lambda: pipeline.text_to_video(drive_caption, turn[:n])),
    ]
    results = []
    for name, description, inputs, job in tqdm(jobs, desc="tasks", unit="task", disable=not config.progress):
        generation = job()
        results.append(TaskResult(name, description, inputs, generation.known, generation.frames))
    return results


def write_report(config: QuickstartConfig, tasks: list[TaskResult], metrics: list[Metric], fps: float) -> Path:
    """Videos per task, the contact sheet, metrics.json and index.html under out_dir; -> index.html."""
    out = config.out_dir
    media = {task.name: write_task_media(task, out, fps) for task in tasks}
    contact_sheet(tasks, out / "contact_sheet.png")
    write_metrics_json(metrics, out / "metrics.json")
    return write_index(tasks, media, metrics, out)


def run_quickstart(config: QuickstartConfig) -> list[Metric]:
    """Build (or reuse) the pipeline, run every task, measure, and write the report; -> the metrics."""
    deadline = Deadline(config.minutes)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(config, deadline)
    _stage(config, "[4/5] Every task on held-out clips")
    tasks = run_tasks(pipeline, config)
    _stage(config, f"[5/5] Quality on {config.eval_clips} held-out clips per task (fewer for the newer tasks)")
    task_clips = {task: min(clips, config.eval_clips) for task, clips in EXTRA_TASK_CLIPS.items()}
    metrics = evaluate_pipeline(pipeline, EvalConfig(config.shapes, config.drive, clips=config.eval_clips,
                                                     task_clips=task_clips), progress=config.progress)
    index = write_report(config, tasks, metrics, pipeline.defaults.fps)
    if config.progress:
        click.echo(format_metrics(metrics))
        click.echo(f"\nReport: {index}")
    return metrics


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("wd-quickstart"),
              show_default=True, help="Directory for the models, videos, contact sheet and index.html.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=QuickstartConfig.minutes,
              show_default=True, help="Wall-clock budget of the whole run; training stops in time to finish in it.")
@click.option("--clips", type=click.IntRange(min=1), default=QuickstartConfig.train_clips, show_default=True,
              help="Training clips per world (the tokenizer uses at most 256 of them).")
@click.option("--eval-clips", type=click.IntRange(min=1), default=QuickstartConfig.eval_clips, show_default=True,
              help="Held-out clips per measured task.")
@click.option("--seed", type=click.IntRange(min=0), default=QuickstartConfig.seed, show_default=True,
              help="Seed of the training runs (the held-out evaluation clips stay the same).")
@click.option("--precision", type=click.Choice(["auto", "fp32"]), default=QuickstartConfig.precision,
              show_default=True, help="auto: bf16 where the CPU has bf16 units (measured), else fp32.")
@click.option("--no-progress", is_flag=True, help="Hide the stage lines and progress bars.")
def quickstart(out_dir: Path, minutes: float, clips: int, eval_clips: int, seed: int, precision: str,
               no_progress: bool) -> None:
    """Train a small world model on synthetic worlds and run every task, on the CPU, with no download.

    Renders the shapes and drive worlds, trains the tokenizer and a small STPT, saves the pipeline to
    OUT/pipeline (a second run reuses it), generates every task on held-out clips and writes their videos,
    OUT/contact_sheet.png and OUT/index.html, and prints quality numbers beside simple baselines.

    \b
    Example:
      wd quickstart
      wd quickstart --out /tmp/wd --minutes 5
      wd generate --task text2video --prompt "a red circle moves up" --checkpoint wd-quickstart/pipeline --out red.gif
    """
    with one_line_errors():
        run_quickstart(QuickstartConfig(out_dir=out_dir, minutes=minutes, train_clips=clips,
                                        tokenizer_clips=min(clips, QuickstartConfig.tokenizer_clips),
                                        eval_clips=eval_clips, seed=seed, precision=precision,
                                        progress=not no_progress))
