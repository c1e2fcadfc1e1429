"""Mask schedules, training masks, task masks and the MaskGIT parallel sampler."""

from wd_masking.conditions import ConcatenableCondition, concat_conditions
from wd_masking.loss import MaskedLoss, masked_cross_entropy, prompt_dropout
from wd_masking.sampler import SampleResult, SamplerConfig, sample, unknown_counts
from wd_masking.schedules import (
    SCHEDULES,
    cosine_schedule,
    cube_schedule,
    get_schedule,
    linear_schedule,
    square_schedule,
)
from wd_masking.task_masks import (
    action_to_video,
    box_region,
    frame_interpolation,
    image_to_video,
    inpainting,
    outpainting,
    stylization,
    text_to_video,
)
from wd_masking.training_masks import (
    MaskMixture,
    apply_mask,
    box_mask,
    prefix_frames_mask,
    sample_training_mask,
    shared_frame_mask,
)

__version__ = "0.1.0"

__all__ = [
    "SCHEDULES",
    "ConcatenableCondition",
    "MaskMixture",
    "MaskedLoss",
    "SampleResult",
    "SamplerConfig",
    "action_to_video",
    "apply_mask",
    "box_mask",
    "box_region",
    "concat_conditions",
    "cosine_schedule",
    "cube_schedule",
    "frame_interpolation",
    "get_schedule",
    "image_to_video",
    "inpainting",
    "linear_schedule",
    "masked_cross_entropy",
    "outpainting",
    "prefix_frames_mask",
    "prompt_dropout",
    "sample",
    "sample_training_mask",
    "shared_frame_mask",
    "square_schedule",
    "stylization",
    "text_to_video",
    "unknown_counts",
]
