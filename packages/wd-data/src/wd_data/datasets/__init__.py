"""Datasets over files on disk; each returns the sample dict of wd_data (frames, caption, actions, is_image, meta)."""

from wd_data.datasets.base import SkipLog, SkippingDataset, check_skip_rate
from wd_data.datasets.image_text import ImageFolderDataset, ImageTextConfig
from wd_data.datasets.nuscenes import NuScenesConfig, NuScenesDataset, can_bus_actions, ego_pose_actions
from wd_data.datasets.tar_shards import ShardItem, TarShardConfig, TarShardDataset, expand_shards
from wd_data.datasets.video_text import VideoTextConfig, VideoTextDataset, read_manifest

__all__ = [
    "ImageFolderDataset",
    "ImageTextConfig",
    "NuScenesConfig",
    "NuScenesDataset",
    "ShardItem",
    "SkipLog",
    "SkippingDataset",
    "TarShardConfig",
    "TarShardDataset",
    "VideoTextConfig",
    "VideoTextDataset",
    "can_bus_actions",
    "check_skip_rate",
    "ego_pose_actions",
    "expand_shards",
    "read_manifest",
]
