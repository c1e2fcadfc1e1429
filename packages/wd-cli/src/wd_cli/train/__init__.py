"""`wd train`: STPT training from one CPU to many GPUs (torchrun + torch.distributed), tokenizer training,
and export of a finished run to a pipeline directory."""

from wd_cli.train.config import (
    CheckpointSection,
    DataSection,
    LoggingSection,
    LossSection,
    ModelSection,
    OptimSection,
    ParallelSection,
    SourceConfig,
    STPTRunConfig,
    TrainSection,
)
from wd_cli.train.configfile import ConfigError, load_config
from wd_cli.train.export import assemble_pipeline, export_run
from wd_cli.train.trainer import train_stpt

__all__ = [
    "CheckpointSection",
    "ConfigError",
    "DataSection",
    "LoggingSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "ParallelSection",
    "STPTRunConfig",
    "SourceConfig",
    "TrainSection",
    "assemble_pipeline",
    "export_run",
    "load_config",
    "train_stpt",
]
