"""`wd train tokenizer`: a config file mapped onto wd_tokenizer's TrainConfig + a VQGAN preset + a frames
source, then wd_tokenizer.train_vqgan (its loop, checkpoints and resume)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from wd_tokenizer import VQGAN, TrainConfig, frame_batches, get_config, train_vqgan
from wd_tokenizer.checkpoints import checkpoint_dirs, verify_checkpoint
from wd_tokenizer.io import atomic_write_text
from wd_tokenizer.runlock import hold_run_directory

from wd_cli.devices import prefers_bf16
from wd_cli.train.checkpoint import newest_whole
from wd_cli.train.config import SourceConfig
from wd_cli.train.configfile import ConfigError, dump_yaml
from wd_cli.train.data import open_source

CONFIG_FILE = "run_config.yaml"  # train_vqgan writes its own config.json next to it


@dataclass
class TokenizerRunConfig:
    """`data`: a frames source (not a token cache); its first `num_clips` samples are loaded and batches of
    `batch_size` frames are drawn from them by (seed, step)."""

    data: SourceConfig
    preset: str = "f16-small"
    overrides: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 8
    num_clips: int = 256

    def __post_init__(self) -> None:
        if self.data.kind == "token_cache":
            raise ConfigError("data.kind: a tokenizer trains on frames; a token_cache holds tokens")
        for key in ("batch_size", "num_clips"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")


def _whole_model(checkpoint: Path) -> Path:
    verify_checkpoint(checkpoint)
    return checkpoint / "model"


def vqgan_dir(path: str | Path) -> Path:
    """The VQGAN directory `path` names: the `model/` of a `wd train tokenizer` run's newest whole checkpoint (its
    files match its manifest; each newer damaged one is skipped with a warning, ConfigError when none is whole),
    a pipeline's `tokenizer/`, or `path` itself."""
    path = Path(path)
    checkpoints = checkpoint_dirs(path)
    if checkpoints:
        return newest_whole(checkpoints, _whole_model, "tokenizer checkpoint", f"the tokenizer run {path}")
    return path / "tokenizer" if (path / "tokenizer" / "config.json").is_file() else path


def load_frames(config: TokenizerRunConfig) -> torch.Tensor:
    """uint8 (M, H, W, 3): every frame of the source's first `num_clips` samples."""
    return torch.cat([torch.as_tensor(sample["frames"]) for sample in open_source(config.data, "data").head(
        config.num_clips)])


def train_tokenizer(config: TokenizerRunConfig, run_dir: str | Path, progress: bool = True) -> VQGAN:
    """Train (or resume) a VQGAN in `run_dir`; -> the model in eval mode."""
    try:
        model = VQGAN(get_config(config.preset, **config.overrides))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"preset/overrides: {error}") from None
    frames = load_frames(config)
    run_dir = Path(run_dir)
    with hold_run_directory(run_dir):  # train_vqgan holds it too; taking it here guards the config file
        atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(config))
        batches = frame_batches(frames, config.batch_size, seed=config.train.seed)
        train = config.train
        if train.mixed_precision == "auto":  # wd_tokenizer's auto means CUDA only; a CPU with bf16 units gains too
            train = dataclasses.replace(train, mixed_precision="bf16" if prefers_bf16(torch.device("cpu")) else "no")
        return train_vqgan(model, batches, train, run_dir, progress=progress)
