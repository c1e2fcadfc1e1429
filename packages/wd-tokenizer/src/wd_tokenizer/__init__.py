"""VQGAN tokenizer: frames <-> discrete tokens, trainable here or loaded from open-muse / aMUSEd checkpoints."""

from wd_tokenizer.convert import detect_layout, from_checkpoint, from_diffusers_vqmodel, from_open_muse
from wd_tokenizer.losses import LossConfig
from wd_tokenizer.metrics import ReconstructionReport, evaluate
from wd_tokenizer.model import PRESETS, VQGAN, VQGANConfig, get_config
from wd_tokenizer.training import TrainConfig, frame_batches, train_vqgan

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "VQGAN",
    "LossConfig",
    "ReconstructionReport",
    "TrainConfig",
    "VQGANConfig",
    "detect_layout",
    "evaluate",
    "frame_batches",
    "from_checkpoint",
    "from_diffusers_vqmodel",
    "from_open_muse",
    "get_config",
    "train_vqgan",
]
