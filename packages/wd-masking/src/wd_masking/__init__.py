"""Mask schedules, training masks, task masks and the MaskGIT parallel sampler."""

__version__ = "0.1.0"
