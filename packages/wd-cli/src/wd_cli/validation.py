"""Checks done before any model runs: `wd generate`'s numbers and output paths, the values of a pipeline's
weights, and the actions a task is given. Each failure is one line naming the option, file or tensor."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click
import torch
from torch import nn
from wd_data import probe_video
from wd_data.video_io import check_video_fps
from wd_tokenizer.nonfinite import first_non_finite

from wd_cli.media import read_actions

if TYPE_CHECKING:
    from wd_cli.generate import GenerateArgs
    from wd_cli.pipeline import WorldDreamerPipeline

# Actions reach the action MLP divided by STPTConfig.action_scale; a million times their typical size overflows
# bfloat16/float32 activations (1e30 did), and no real action is that large.
MAX_ACTION = 1e4
SAMPLER_FLAGS = {"steps": "--steps", "guidance_scale": "--guidance", "temperature": "--temperature",
                 "top_k": "--top-k", "plausibility": "--plausibility"}


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (click's own range lets both through)."""

    name = "finite float"

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def check_output_file(path: Path, option: str) -> None:
    """ValueError naming `option` and `path` unless a file can be written there: not a directory, its folder
    existing or creatable (it is created now), writable (probed with a real file, so read-only mounts count)."""
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory")
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    probe = path.with_name(f".{path.name}.probe-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot write there ({error.strerror or error})") from None


def check_finite_weights(module: nn.Module, where: str | os.PathLike) -> None:
    """ValueError naming the first tensor of `module` that holds NaN or inf (such weights give NaN logits)."""
    name = first_non_finite(module.state_dict().items())
    if name is not None:
        raise ValueError(f"{where}: tensor {name} holds NaN or inf (a diverged training run?); it cannot generate")


def check_actions(actions: torch.Tensor, action_scale: tuple[float, ...]) -> None:
    """ValueError unless every action is finite and at most MAX_ACTION times its dimension's action_scale."""
    if not bool(torch.isfinite(actions).all()):
        raise ValueError("actions must be finite numbers (found NaN or inf)")
    scaled = actions / torch.tensor(action_scale or (1.0,) * actions.shape[-1])
    if bool((scaled.abs() > MAX_ACTION).any()):
        raise ValueError(f"actions must be at most {MAX_ACTION:g} times the model's action_scale "
                         f"{action_scale or '(1 per dimension)'}, got up to {float(actions.abs().max()):g}")


def check_outputs(args: GenerateArgs) -> None:
    """Before loading anything: --out and --tokens-out are writable, and --fps (when given) suits --out's format."""
    check_output_file(args.out, "--out")
    if args.tokens_out is not None:
        check_output_file(args.tokens_out, "--tokens-out")
    if args.fps is not None:
        check_video_fps(args.out, args.fps)


def check_generation(pipeline: WorldDreamerPipeline, args: GenerateArgs) -> None:
    """After loading the pipeline, before sampling: the fps it writes at, the sampler settings, and the memory
    of the request (the input video's size probed, not decoded)."""
    check_video_fps(args.out, args.fps or pipeline.defaults.fps)
    flags = args.sampler_flags()
    try:
        config = pipeline.defaults.sampler_config(**flags)
    except ValueError as error:  # name the flag the user gave (the sampler names its field)
        given = [name for name in flags if str(error).startswith(name) and flags[name] is not None]
        raise ValueError(f"{SAMPLER_FLAGS[given[0]]}: {error}" if given else f"pipeline defaults: {error}") from None
    size = request_size(pipeline, args)
    pipeline.check_request(size.frames, config.guidance_scale > 0, size.input_frames, size.given_frames)


class RequestSize(NamedTuple):
    """What a `wd generate` request's memory depends on (see `generation_memory`)."""

    frames: int  # frames out
    input_frames: tuple[int, int, int] | None  # (count, height, width) of the input video
    given_frames: int | None  # a rollout's leading given frames; None for the video tasks


def request_size(pipeline: WorldDreamerPipeline, args: GenerateArgs) -> RequestSize:
    """The size of `args`' request, the input video probed, not decoded (its frame count estimated from duration
    and rate)."""
    given = 0 if args.image is None else 1
    if args.actions is not None:  # action2video, text2video with actions: one row per output frame
        return RequestSize(len(read_actions(args.actions)), None, given)
    if args.video is None:  # text2video, image2video
        return RequestSize(args.frames or pipeline.defaults.num_frames, None, given)
    info = probe_video(args.video)
    count = math.ceil(info.duration * (info.fps or 30.0))  # no rate given: assume a high one
    if args.task == "predict":  # the whole video, continued to --frames
        return RequestSize(args.frames or pipeline.defaults.num_frames, (count, info.height, info.width), count)
    if args.task == "interpolate":  # every keyframe read, spread over --frames (or every --every-th frame)
        return RequestSize(args.frames or (count - 1) * args.every + 1, (count, info.height, info.width), None)
    frames = min(count, args.frames or count)  # the video editing tasks read the first --frames frames
    return RequestSize(frames, (frames, info.height, info.width), None)
