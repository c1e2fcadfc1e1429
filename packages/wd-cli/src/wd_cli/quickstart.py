"""`wd quickstart`: the whole world model on a CPU in minutes, with no download.

Stages: render the synthetic worlds -> train the small tokenizer -> tokenize clips into token caches -> train a
small STPT on both worlds (captions through the hash text encoder, drive actions) -> save the pipeline -> run
every task on held-out seeds -> measure quality against baselines -> write videos, a contact sheet and
`index.html`. Every stage that trains is resumable and skipped when its result exists, so a second run reuses
the trained models. The training stages share the time budget (`minutes`) by measuring their own step time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from wd_cli.errors import one_line_errors
from wd_cli.media import fit_inside
from wd_cli.evaluation import (
    EvalConfig,
    Metric,
    evaluate_pipeline,
    format_metrics,
    synthetic_worlds,
    write_metrics_json,
)
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
    minutes: float = 12.0  # time budget of the training stages together (the rest takes about two minutes)
    size: int = 32  # frame height and width in pixels
    num_frames: int = 8  # frames per clip, the STPT window
    train_clips: int = 1024  # clips per world in the token caches
    tokenizer_clips: int = 256  # clips per world whose frames train the tokenizer
    eval_clips: int = 32  # held-out clips per measured task (with 16 the image2video verdict moved with the clips)
    text_dim: int = 64
    seed: int = 0
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

    @property
    def shapes(self) -> ShapesConfig:
        return synthetic_worlds(self.size, self.size, self.num_frames)[0]

    @property
    def drive(self) -> DriveConfig:
        return synthetic_worlds(self.size, self.size, self.num_frames)[1]


# Shares of `minutes`: the tokenizer, then the STPT (the larger model of the two).
TOKENIZER_SHARE, STPT_SHARE = 0.28, 0.72
CALIBRATION_STEPS = 20

# Measured on the synthetic worlds (docs/benchmarks.md, quickstart section).
TOKENIZER_TRAINING = dict(lr=5e-4, betas=(0.9, 0.99), weight_decay=0.0, batch_size=8, max_steps=4000)
STPT_MODEL = dict(width=128, depth=4, num_heads=4, action_dim=2)
STPT_TRAINING = dict(lr=2e-3, warmup_steps=100, batch_size=8, max_steps=20_000)
# Micro-batches per cache: image-to-video's motion needs more steps than action-to-video's turns (1:1 lost
# to copying the first frame in two of three runs, 2:1 left the turns unlearnt in one of three).
SOURCE_WEIGHTS = {"shapes": 1.5, "drive": 1.0}
SAMPLING = dict(steps=10, guidance_scale=2.0, temperature=0.7, choice_temperature=2.0)
CONTEXT_FRAMES = 2  # rollout windows continue from the last 2 frames
# Held-out clips of the tasks past the paper's five, fewer than `eval_clips` (at most that many): each clip costs
# one or two windows, a long rollout's eight (two drives of four windows), and the quickstart must stay near its
# time.
EXTRA_TASK_CLIPS = {"predict": 8, "interpolate": 8, "outpaint": 8, "text+actions": 8, "long-rollout": 4}


def calibrated_steps(run: Callable[[int], object], budget_seconds: float, maximum: int) -> int:
    """How many steps in total fit `budget_seconds` for `run(steps)`, a resumable trainer that trains up to
    `steps`. It runs CALIBRATION_STEPS (start-up included), then resumes twice, for CALIBRATION_STEPS and for
    3 * CALIBRATION_STEPS more: the difference of those two durations is the step time without a resume's
    cost (loading data and checkpoint, which varies from run to run and had made budgets 25% short), and
    the rest of the first is that cost, which the last run pays once more. Returns at least
    5 * CALIBRATION_STEPS, at most `maximum`."""
    start = time.monotonic()
    run(CALIBRATION_STEPS)
    durations = []
    for steps in (2 * CALIBRATION_STEPS, 5 * CALIBRATION_STEPS):
        begin = time.monotonic()
        run(steps)
        durations.append(time.monotonic() - begin)
    # A resume cannot cost more than half the longer run: that bounds the step time from below under noise.
    per_step = max((durations[1] - durations[0]) / (2 * CALIBRATION_STEPS),
                   0.5 * durations[1] / (3 * CALIBRATION_STEPS), 1e-9)
    resume = max(0.0, durations[0] - CALIBRATION_STEPS * per_step)
    remaining = budget_seconds - (time.monotonic() - start) - resume
    return int(min(maximum, 5 * CALIBRATION_STEPS + max(0.0, remaining) / per_step))


def _stage(config: QuickstartConfig, text: str) -> None:
    if config.progress:
        click.secho(text, bold=True, err=True)


def tokenizer_stage(config: QuickstartConfig, budget_seconds: float) -> VQGAN:
    """The f4-small tokenizer trained on frames of both worlds (out_dir/tokenizer once done)."""
    final = config.out_dir / "tokenizer"
    if final.is_dir():
        return VQGAN.from_pretrained(final).eval()
    clips = [ShapesWorld(config.shapes).render(seed).frames for seed in range(config.tokenizer_clips)]
    clips += [DriveWorld(config.drive).render(seed).frames for seed in range(config.tokenizer_clips)]
    batches = frame_batches(np.concatenate(clips), TOKENIZER_TRAINING["batch_size"], seed=config.seed)
    torch.manual_seed(config.seed)
    model = VQGAN(get_config("f4-small"))
    run_dir = config.out_dir / "runs" / "tokenizer"

    def run(steps: int) -> VQGAN:
        train = TrainConfig(steps=steps, lr=TOKENIZER_TRAINING["lr"], betas=TOKENIZER_TRAINING["betas"],
                            weight_decay=TOKENIZER_TRAINING["weight_decay"], checkpoint_every=500, log_every=50,
                            seed=config.seed, loss=LossConfig(disc_start=10**9))
        return train_vqgan(model, batches, train, run_dir, progress=config.progress)

    steps = calibrated_steps(run, budget_seconds, TOKENIZER_TRAINING["max_steps"])
    model = run(steps)
    with atomic_directory(final) as staging:
        model.save_pretrained(staging)
    return model


def token_cache_stage(config: QuickstartConfig, tokenizer: VQGAN, text_encoder: HashTextEncoder) -> list[Path]:
    """Token caches of the training clips of both worlds. Shapes clips keep their captions' embeddings; drive
    clips are stored without text, because their captions name the turn and action-to-video must follow the
    actions alone (as the paper's nuScenes model does)."""
    metadata = {"codebook_size": tokenizer.codebook_size, "tokenizer": "f4-small"}
    seeds = range(config.train_clips)
    sources = [("shapes", ShapesDataset(config.shapes, seeds), text_encoder.embed),
               ("drive", DriveDataset(config.drive, seeds), lambda _caption: text_encoder.embed(""))]
    with torch.no_grad():
        return [write_token_cache(dataset, tokenizer.encode_video, config.out_dir / "caches" / name,
                                  encode_text=encode_text, metadata=metadata, progress=config.progress)
                for name, dataset, encode_text in sources]


def stpt_run_config(config: QuickstartConfig, caches: list[Path], steps: int, max_minutes: float) -> STPTRunConfig:
    """Both token caches at SOURCE_WEIGHTS; AdamW with warmup and cosine decay over `steps`."""
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
        train=TrainSection(steps=steps, seed=config.seed, max_minutes=max_minutes),
        checkpoint=CheckpointSection(every=500, keep=2),
        logging=LoggingSection(every=25),
    )


def stpt_stage(config: QuickstartConfig, caches: list[Path], budget_seconds: float) -> STPT:
    """The STPT trained on both caches for what fits `budget_seconds` (resumes an interrupted run)."""
    run_dir = config.out_dir / "runs" / "stpt"
    # The budget also caps the wall clock, in case the machine slows down after calibration.
    cap = 1.2 * budget_seconds / 60

    def run(steps: int) -> STPT:
        return train_stpt(stpt_run_config(config, caches, steps, cap), run_dir, progress=config.progress)

    return run(calibrated_steps(run, budget_seconds, STPT_TRAINING["max_steps"]))


def build_pipeline(config: QuickstartConfig) -> WorldDreamerPipeline:
    """Train what is missing (tokenizer, caches, STPT) and save out_dir/pipeline; load it when it exists."""
    pipeline_dir = config.out_dir / "pipeline"
    if pipeline_dir.is_dir():
        _stage(config, f"Reusing the trained pipeline in {pipeline_dir}")
        return WorldDreamerPipeline.from_pretrained(pipeline_dir)
    budget = 60 * config.minutes
    _stage(config, f"[1/5] Tokenizer: f4-small on {2 * config.tokenizer_clips} synthetic clips "
                   f"(~{TOKENIZER_SHARE * config.minutes:.1f} min)")
    tokenizer = tokenizer_stage(config, TOKENIZER_SHARE * budget)
    text_encoder = HashTextEncoder(dim=config.text_dim, seed=config.seed)
    _stage(config, f"[2/5] Token caches: {config.train_clips} clips per world")
    caches = token_cache_stage(config, tokenizer, text_encoder)
    _stage(config, f"[3/5] STPT on both worlds (~{STPT_SHARE * config.minutes:.1f} min)")
    stpt = stpt_stage(config, caches, STPT_SHARE * budget)
    defaults = PipelineDefaults(**SAMPLING, num_frames=config.num_frames, height=config.size, width=config.size,
                                fps=config.shapes.fps, context_frames=min(CONTEXT_FRAMES, config.num_frames - 1))
    pipeline = WorldDreamerPipeline(tokenizer, stpt, text_encoder, defaults)
    pipeline.save_pretrained(pipeline_dir)
    return pipeline


def _recoloured(caption: str, colour: str) -> str:
    """The caption with its first colour word replaced by `colour` (the stylization prompt)."""
    for name in PALETTE:
        if name in caption.split():
            return caption.replace(name, colour, 1)
    return caption


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
    quarter = config.size // 4
    box = (quarter, quarter, 3 * quarter, 3 * quarter)
    strip = shapes.frames[:, :, quarter : 3 * quarter]
    style = "blue" if "blue" not in shapes.caption else "red"
    given = EvalConfig.given_frames
    jobs = [
        ("text2video", f"prompt: {shapes.caption!r}", None, lambda: pipeline.text_to_video(shapes.caption)),
        ("image2video", f"first frame + prompt {shapes.caption!r}", shapes.frames,
         lambda: pipeline.image_to_video(shapes.frames[0], prompt=shapes.caption)),
        ("predict", f"the first {given} frames + prompt {shapes.caption!r}", shapes.frames,
         lambda: pipeline.image_to_video(shapes.frames[:given], prompt=shapes.caption)),
        ("interpolate", f"every {every}th of {len(long_shapes.frames)} frames given (windows end on keyframes)",
         long_shapes.frames, lambda: pipeline.interpolate(long_shapes.frames[::every], every, long_shapes.caption)),
        ("inpaint", f"box {box} (top, left, bottom, right) regenerated, prompt {shapes.caption!r}", shapes.frames,
         lambda: pipeline.inpaint(shapes.frames, box=box, prompt=shapes.caption)),
        ("outpaint", "the middle half of the columns given (input: its edges replicated), the sides generated",
         fit_inside(strip, (config.size, config.size))[0].numpy(),
         lambda: pipeline.outpaint(strip, prompt=shapes.caption)),
        ("stylize", f"half the tokens redrawn under {_recoloured(shapes.caption, style)!r}", shapes.frames,
         lambda: pipeline.stylize(shapes.frames, _recoloured(shapes.caption, style), mask_ratio=0.5)),
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
    config.out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(config)
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
              show_default=True, help="Training time budget (the whole run takes about two minutes more).")
@click.option("--clips", type=click.IntRange(min=1), default=QuickstartConfig.train_clips, show_default=True,
              help="Training clips per world (the tokenizer uses at most 256 of them).")
@click.option("--eval-clips", type=click.IntRange(min=1), default=QuickstartConfig.eval_clips, show_default=True,
              help="Held-out clips per measured task.")
@click.option("--no-progress", is_flag=True, help="Hide the stage lines and progress bars.")
def quickstart(out_dir: Path, minutes: float, clips: int, eval_clips: int, no_progress: bool) -> None:
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
                                        eval_clips=eval_clips, progress=not no_progress))
