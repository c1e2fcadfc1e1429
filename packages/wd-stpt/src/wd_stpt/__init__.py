"""STPT: the Spatial Temporal Patchwise Transformer backbone of WorldDreamer."""

from wd_stpt.attention import attention
from wd_stpt.condition import STPTCondition
from wd_stpt.config import PRESETS, STPTConfig, get_config
from wd_stpt.cuda_graph import GraphedForward
from wd_stpt.model import STPT

__version__ = "0.1.0"
__all__ = ["GraphedForward", "PRESETS", "STPT", "STPTCondition", "STPTConfig", "attention", "get_config"]
