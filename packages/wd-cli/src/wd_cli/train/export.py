"""Export a training run to a pipeline directory that `wd generate` and `WorldDreamerPipeline.from_pretrained` load."""

from __future__ import annotations

import warnings
from pathlib import Path

from wd_stpt import STPT
from wd_tokenizer.checkpoints import checkpoint_dirs, verify_checkpoint

from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.validation import check_finite_weights
from wd_cli.train.config import STPTRunConfig
from wd_cli.train.configfile import ConfigError, load_config
from wd_cli.train.data import open_source
from wd_cli.train.trainer import CONFIG_FILE, open_text_encoder, open_tokenizer


def clip_defaults(config: STPTRunConfig, downsample_factor: int) -> PipelineDefaults:
    """The pipeline's clip shape: that of the first source's first sample (the shape the model trained at)."""
    sample = open_source(config.data.sources[0], "data.sources.0").dataset[0]
    if "tokens" in sample:
        frames, height, width = sample["tokens"].shape
        height, width = height * downsample_factor, width * downsample_factor
    else:
        frames, height, width = sample["frames"].shape[:3]
    return PipelineDefaults(num_frames=frames, height=height, width=width,
                            context_frames=max(1, min(PipelineDefaults.context_frames, frames - 1)))


def export_run(run_dir: str | Path, out_dir: str | Path, tokenizer: str | None = None,
               text_encoder: str | None = None) -> Path:
    """Write `out_dir` (a pipeline directory) from the newest checkpoint of `run_dir` (its EMA weights when the run
    kept them); the tokenizer and text encoder default to the run's `model.tokenizer` / `model.text_encoder`."""
    run_dir = Path(run_dir)
    if not checkpoint_dirs(run_dir) or not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a training run with a checkpoint (no {CONFIG_FILE} or checkpoints/)")
    config = load_config(STPTRunConfig, run_dir / CONFIG_FILE)
    tokenizer_dir, text_dir = tokenizer or config.model.tokenizer, text_encoder or config.model.text_encoder
    if tokenizer_dir is None or text_dir is None:
        raise ConfigError("export needs a tokenizer and a text encoder: the run has no model.tokenizer / "
                          "model.text_encoder, so pass them")
    vqgan = open_tokenizer(tokenizer_dir, "cpu")
    try:
        pipeline = WorldDreamerPipeline(vqgan, newest_weights(run_dir), open_text_encoder(text_dir),
                                        clip_defaults(config, vqgan.downsample_factor))
    except ValueError as error:
        raise ConfigError(f"cannot export {run_dir}: {error}") from None
    pipeline.save_pretrained(out_dir)
    return Path(out_dir)


def newest_weights(run_dir: Path) -> STPT:
    """The STPT of the newest checkpoint that is whole (its manifest matches, its weights finite): the EMA weights
    when the run kept them. Each newer damaged one is skipped with a warning; ConfigError when none is whole."""
    for checkpoint in checkpoint_dirs(run_dir)[::-1]:
        weights = checkpoint / "ema" if (checkpoint / "ema").is_dir() else checkpoint / "model"
        try:
            verify_checkpoint(checkpoint)
            model = STPT.from_pretrained(weights)
            check_finite_weights(model, weights)
        except (OSError, ValueError) as error:
            warnings.warn(f"skipping checkpoint {checkpoint.name}: {error}", stacklevel=2)
            continue
        return model
    raise ConfigError(f"no checkpoint of {run_dir} is whole (see the warnings)")
