"""Datasets over files on disk; each returns the sample dict of wd_data (frames, caption, actions, is_image, meta)."""

from wd_data.datasets.base import SkippingDataset
from wd_data.datasets.image_text import ImageFolderDataset, ImageTextConfig, ImageTextShards
from wd_data.datasets.nuscenes import NuScenesConfig, NuScenesDataset, can_bus_actions, ego_pose_actions
from wd_data.datasets.video_text import VideoTextConfig, VideoTextDataset, read_manifest

__all__ = [
    "ImageFolderDataset",
    "ImageTextConfig",
    "ImageTextShards",
    "NuScenesConfig",
    "NuScenesDataset",
    "SkippingDataset",
    "VideoTextConfig",
    "VideoTextDataset",
    "can_bus_actions",
    "ego_pose_actions",
    "read_manifest",
]
