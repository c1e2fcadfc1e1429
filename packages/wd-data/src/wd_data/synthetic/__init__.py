"""Synthetic worlds rendered deterministically from a seed with numpy: the embedded default data.

"shapes": coloured shapes bouncing off the walls, captioned from their colours, kinds and motion.
"drive": a road seen from a car that follows (yaw change, speed) actions.
Each clip carries its ground-truth state, and each world a measurement to score generated videos by.
"""

from wd_data.synthetic.clip import EVAL_SEED_START, TRAIN_SEEDS, Clip, eval_seeds
from wd_data.synthetic.drive import (
    DriveConfig,
    DriveDataset,
    DriveWorld,
    estimate_forward_motion,
    estimate_road_heading,
    estimate_yaw_change,
)
from wd_data.synthetic.shapes import (
    BACKGROUND,
    KINDS,
    PALETTE,
    Detection,
    ShapesConfig,
    ShapesDataset,
    ShapesWorld,
    colour_mask,
    detect_shapes,
    palette_labels,
)

__all__ = [
    "BACKGROUND",
    "EVAL_SEED_START",
    "KINDS",
    "PALETTE",
    "TRAIN_SEEDS",
    "Clip",
    "Detection",
    "DriveConfig",
    "DriveDataset",
    "DriveWorld",
    "ShapesConfig",
    "ShapesDataset",
    "ShapesWorld",
    "colour_mask",
    "detect_shapes",
    "estimate_forward_motion",
    "estimate_road_heading",
    "estimate_yaw_change",
    "eval_seeds",
    "palette_labels",
]
