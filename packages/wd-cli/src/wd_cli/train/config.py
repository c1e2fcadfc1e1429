"""The STPT training run's configuration: one dataclass per config file section."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from wd_cli.train.configfile import ConfigError

SOURCE_KINDS = ("token_cache", "shapes", "drive", "video_text", "image_text", "tar_shards", "nuscenes")


@dataclass
class ModelSection:
    """An STPT preset plus field overrides; `codebook_size` and `text_dim` come from the data when not given."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None  # VQGAN, pipeline or `wd train tokenizer` run dir: tokenizes frames, decodes samples
    text_encoder: str | None = None  # text encoder directory (wd_cli.text_encoders.load_text_encoder)
    init_from: str | None = None  # checkpoint, STPT or pipeline directory: weights only (fine-tuning)


@dataclass
class SourceConfig:
    """One data source; each micro-batch comes from one source, picked with probability ~ weight.

    `path`: the token cache, manifest or video folder, image folder, tar shards (folder, file or brace pattern)
    or nuScenes dataroot; `options`: fields of the matching wd_data config (ShapesConfig, DriveConfig,
    VideoTextConfig, ImageTextConfig, TarShardConfig, NuScenesConfig). Bad samples are skipped and counted;
    more than `max_skip_rate` of them (judged after 100 samples) stops the run."""

    kind: Literal["token_cache", "shapes", "drive", "video_text", "image_text", "tar_shards", "nuscenes"]
    path: str | None = None
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    max_skip_rate: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.max_skip_rate <= 1:
            raise ValueError(f"max_skip_rate: must be in [0, 1], got {self.max_skip_rate}")


@dataclass
class DataSection:
    sources: list[SourceConfig]
    batch_size: int = 8  # global samples per micro-batch, split evenly over the ranks
    num_workers: int = 0  # threads loading one micro-batch's samples (video decoding, world rendering); 0: inline


@dataclass
class LossSection:
    """Paper eq. 5 with wd_masking's mask mixture (shared / prefix-frames / box masks)."""

    mask_shared: float = 0.8
    mask_prefix: float = 0.1
    mask_box: float = 0.1
    mask_schedule: str = "cosine"
    label_smoothing: float = 0.0
    prompt_dropout: float = 0.1


@dataclass
class OptimSection:
    """AdamW, linear warmup then cosine decay to `min_lr_ratio * lr` (or constant), gradient clipping, EMA."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01  # on linear and conv weights only (not norms, biases, embeddings, positions)
    warmup_steps: int = 1000
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float | None = None  # e.g. 0.9999; None: no EMA


@dataclass
class TrainSection:
    steps: int = 10_000
    grad_accumulation: int = 1
    seed: int = 0
    max_minutes: float | None = None  # stop (with a checkpoint) after this much training time in this call
    # Total training time of the run over all its calls: the run stops (with a checkpoint) when it is spent, and
    # the lr schedule follows whichever of `steps` and this time runs out first, so a deadline ends annealed.
    time_budget_minutes: float | None = None
    # auto: bf16 autocast where it is faster (CUDA; a CPU with bf16 units, measured: wd_cli.devices.prefers_bf16)
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    device: str | None = None  # None: cuda:LOCAL_RANK when CUDA is available, else cpu
    max_nonfinite_steps: int = 20  # steps skipped in a row (non-finite loss or gradient) that stop the run


@dataclass
class CheckpointSection:
    every: int = 1000
    keep: int = 3
    resume: str = "auto"  # "auto": newest complete checkpoint in run_dir; "none"; or a checkpoint directory


@dataclass
class LoggingSection:
    every: int = 10  # metrics.jsonl (and TensorBoard) line every this many steps
    tensorboard: bool = False
    sample_every: int | None = None  # sample videos into run_dir/samples/ (needs model.tokenizer)
    num_samples: int = 2
    sample_steps: int = 10


@dataclass
class ParallelSection:
    """Applied from outside the model (parallel.py): activation checkpointing, torch.compile, DDP or FSDP2."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # used when WORLD_SIZE > 1; one process trains the plain model
    activation_checkpointing: bool = False
    compile: bool = False
    fsdp_param_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    fsdp_reduce_dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class STPTRunConfig:
    """Everything `train_stpt` needs; `wd train stpt --config FILE` maps FILE onto it."""

    data: DataSection
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def __post_init__(self) -> None:
        if not self.data.sources:
            raise ConfigError("data.sources: give at least one source")
        positive = {"data.batch_size": self.data.batch_size, "train.grad_accumulation": self.train.grad_accumulation,
                    "checkpoint.every": self.checkpoint.every, "checkpoint.keep": self.checkpoint.keep,
                    "logging.every": self.logging.every, "logging.num_samples": self.logging.num_samples,
                    "logging.sample_steps": self.logging.sample_steps,
                    "logging.sample_every": self.logging.sample_every,
                    "train.max_nonfinite_steps": self.train.max_nonfinite_steps}
        non_negative = {"data.num_workers": self.data.num_workers, "train.steps": self.train.steps,
                        "optim.warmup_steps": self.optim.warmup_steps, "optim.lr": self.optim.lr,
                        "optim.weight_decay": self.optim.weight_decay}
        numbers = {"optim.lr": self.optim.lr, "optim.weight_decay": self.optim.weight_decay,
                   "optim.min_lr_ratio": self.optim.min_lr_ratio, "optim.grad_clip": self.optim.grad_clip or 1.0,
                   "train.max_minutes": self.train.max_minutes or 1.0,
                   **{f"optim.betas.{index}": beta for index, beta in enumerate(self.optim.betas)},
                   **{f"loss.{name}": value for name, value in vars(self.loss).items() if isinstance(value, float)},
                   **{f"data.sources.{index}.weight": source.weight for index, source in enumerate(self.data.sources)}}
        for key, value in numbers.items():
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value}")
        if not all(0 <= beta < 1 for beta in self.optim.betas) or not 0 <= self.optim.min_lr_ratio <= 1:
            raise ConfigError(f"optim.betas must be in [0, 1) and optim.min_lr_ratio in [0, 1], got "
                              f"{self.optim.betas} and {self.optim.min_lr_ratio}")
        for key, value in positive.items():
            if value is not None and value < 1:
                raise ConfigError(f"{key}: must be >= 1, got {value}")
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key}: must be >= 0, got {value}")
        for index, source in enumerate(self.data.sources):
            if not source.weight > 0:
                raise ConfigError(f"data.sources.{index}.weight: must be > 0, got {source.weight}")
        if self.optim.grad_clip is not None and not self.optim.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 (or absent for no clipping), got {self.optim.grad_clip}")
        if self.optim.ema_decay is not None and not 0 < self.optim.ema_decay < 1:
            raise ConfigError(f"optim.ema_decay: must be in (0, 1), got {self.optim.ema_decay}")
        if self.optim.ema_decay is not None and self.parallel.strategy == "fsdp":
            raise ConfigError("optim.ema_decay: EMA is not supported with parallel.strategy = 'fsdp'")
        for name in ("max_minutes", "time_budget_minutes"):
            value = getattr(self.train, name)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"train.{name}: must be a positive number of minutes, got {value}")
