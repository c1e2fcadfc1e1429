"""STPT: the Spatial Temporal Patchwise Transformer backbone of WorldDreamer."""

__version__ = "0.1.0"
