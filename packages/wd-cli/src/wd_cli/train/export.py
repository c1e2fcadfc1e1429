"""Write a pipeline directory (what `wd generate` and `WorldDreamerPipeline.from_pretrained` load) from a training
run (`export_run`), or from parts: an STPT from a run, checkpoint, pipeline or STPT directory, a tokenizer, a text
encoder and sampler defaults (`assemble_pipeline`, `wd convert pipeline`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from wd_stpt import STPT
from wd_tokenizer import VQGAN
from wd_tokenizer.checkpoints import checkpoint_dirs, verify_checkpoint

from wd_cli.pipeline import PIPELINE_FILE, PipelineDefaults, WorldDreamerPipeline
from wd_cli.text_encoders import load_text_encoder, unwrap
from wd_cli.train.checkpoint import newest_whole, stpt_weights_dir
from wd_cli.train.config import STPTRunConfig
from wd_cli.train.configfile import ConfigError, apply_overrides, from_dict, load_config
from wd_cli.train.data import open_source
from wd_cli.train.tokenizer import vqgan_dir
from wd_cli.train.trainer import CONFIG_FILE
from wd_cli.validation import check_finite_weights

Part = TypeVar("Part")


def default_context_frames(num_frames: int) -> int:
    """The rollout context for `num_frames`-frame windows: PipelineDefaults' value, kept below `num_frames`."""
    return max(1, min(PipelineDefaults.context_frames, num_frames - 1))


def clip_defaults(config: STPTRunConfig, downsample_factor: int) -> PipelineDefaults:
    """The pipeline's clip shape: that of the first source's first sample (the shape the model trained at)."""
    sample = open_source(config.data.sources[0], "data.sources.0").head(1)[0]
    if "tokens" in sample:
        frames, height, width = sample["tokens"].shape
        height, width = height * downsample_factor, width * downsample_factor
    else:
        frames, height, width = sample["frames"].shape[:3]
    return PipelineDefaults(num_frames=frames, height=height, width=width,
                            context_frames=default_context_frames(frames))


def with_overrides(defaults: PipelineDefaults, overrides: Sequence[str]) -> PipelineDefaults:
    """`defaults` with `key=value` fields replaced (TOML scalars, type-checked); setting `num_frames` alone also
    brings `context_frames` below it."""
    values = apply_overrides(dataclasses.asdict(defaults), list(overrides))
    given = {override.partition("=")[0].strip() for override in overrides}
    if "num_frames" in given and "context_frames" not in given and isinstance(values["num_frames"], int):
        values["context_frames"] = min(values["context_frames"], default_context_frames(values["num_frames"]))
    return from_dict(PipelineDefaults, values, "defaults")


def open_part(name: str, loader: Callable[[Path], Part], path: str | Path) -> Part:
    """`loader(path)`, its failure a one-line ConfigError naming the part."""
    try:
        return loader(Path(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{name} {path}: {' '.join(str(error).split())}") from None


def assemble_pipeline(out_dir: str | Path, stpt: str | Path, tokenizer: str | Path | None = None,
                      text_encoder: str | Path | None = None, overrides: Sequence[str] = ()) -> Path:
    """Write `out_dir` from parts, checking that they fit (one-line ConfigErrors). `stpt` is a training run (its
    newest whole checkpoint, EMA weights when kept), a checkpoint, a pipeline or an STPT directory. A run supplies
    the tokenizer, text encoder and clip shape it trained with (`model.tokenizer`, `model.text_encoder`, its
    data), a pipeline its own parts and defaults; given parts replace them, and `overrides` ("steps=12", any
    `PipelineDefaults` field) the defaults. A tokenizer is a VQGAN directory, a pipeline or a `wd train
    tokenizer` run (`vqgan_dir`)."""
    source = Path(stpt)
    vqgan, encoder, defaults, run = None, None, None, None
    if (source / PIPELINE_FILE).is_file():
        base = open_part("pipeline", lambda path: WorldDreamerPipeline.from_pretrained(path, device="cpu"), source)
        vqgan, model, encoder, defaults = base.tokenizer, base.stpt, unwrap(base.text_encoder), base.defaults
    else:
        model, run = open_stpt(source)
        if run is not None:
            tokenizer, text_encoder = tokenizer or run.model.tokenizer, text_encoder or run.model.text_encoder
        missing = [name for name, part in (("tokenizer", tokenizer), ("text encoder", text_encoder)) if part is None]
        if missing:
            raise ConfigError(f"{source} names no {missing[0]} (a training run's config or a pipeline does): "
                              f"pass the {' and the '.join(missing)} directory")
    if tokenizer is not None:
        vqgan = open_part("tokenizer", lambda path: VQGAN.from_pretrained(vqgan_dir(path)), tokenizer)
    if text_encoder is not None:
        encoder = open_part("text encoder", load_text_encoder, text_encoder)
    if defaults is None:
        defaults = clip_defaults(run, vqgan.downsample_factor) if run is not None else PipelineDefaults()
    defaults = with_overrides(defaults, overrides)
    try:
        pipeline = WorldDreamerPipeline(vqgan, model, encoder, defaults)
    except ValueError as error:
        raise ConfigError(f"the parts do not fit: {error}") from None
    pipeline.save_pretrained(out_dir)
    return Path(out_dir)


def open_stpt(path: Path) -> tuple[STPT, STPTRunConfig | None]:
    """The STPT of a run (its newest whole checkpoint), a checkpoint, a pipeline or an STPT directory; and the
    run's config when `path` is a training run."""
    if (path / CONFIG_FILE).is_file():
        return newest_weights(path), load_config(STPTRunConfig, path / CONFIG_FILE)
    return open_part("STPT", checked_weights, path), None


def checked_weights(path: Path) -> STPT:
    """The STPT of a checkpoint (`ema/` when kept, else `model/`; its files checked against its manifest), a
    pipeline (`stpt/`) or `path` itself; ValueError when its weights hold NaN or inf."""
    verify_checkpoint(path)
    weights = path / "ema" if (path / "ema").is_dir() else stpt_weights_dir(path)
    model = STPT.from_pretrained(weights)
    check_finite_weights(model, weights)
    return model


def newest_weights(run_dir: Path) -> STPT:
    """`checked_weights` of the newest checkpoint of `run_dir` that is whole (its manifest matches, its weights
    finite). Each newer damaged one is skipped with a warning; ConfigError when none is whole."""
    checkpoints = checkpoint_dirs(run_dir)
    if not checkpoints:
        raise ConfigError(f"{run_dir} is a training run without a checkpoint yet")
    return newest_whole(checkpoints, checked_weights, "checkpoint", str(run_dir))


def export_run(run_dir: str | Path, out_dir: str | Path, tokenizer: str | None = None,
               text_encoder: str | None = None) -> Path:
    """Write `out_dir` (a pipeline directory) from the newest checkpoint of `run_dir` (its EMA weights when the run
    kept them); the tokenizer and text encoder default to the run's `model.tokenizer` / `model.text_encoder`."""
    run_dir = Path(run_dir)
    if not checkpoint_dirs(run_dir) or not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a training run with a checkpoint (no {CONFIG_FILE} or checkpoints/)")
    return assemble_pipeline(out_dir, run_dir, tokenizer, text_encoder)
