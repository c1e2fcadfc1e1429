"""Video IO, dataset adapters, synthetic worlds and token caches."""

from wd_data.collate import collate_samples
from wd_data.curation import CurationConfig, CuratedClip, curate_videos
from wd_data.datasets import (
    ImageFolderDataset,
    ImageTextConfig,
    NuScenesConfig,
    NuScenesDataset,
    SkipLog,
    TarShardConfig,
    TarShardDataset,
    VideoTextConfig,
    VideoTextDataset,
)
from wd_data.errors import BadSampleError, DataSourceError, MediaReadError
from wd_data.image_io import read_image
from wd_data.video_io import VideoInfo, iter_frames, probe_video, read_video, write_video
from wd_data.synthetic import (
    DriveConfig,
    DriveDataset,
    DriveWorld,
    ShapesConfig,
    ShapesDataset,
    ShapesWorld,
    detect_shapes,
    estimate_forward_motion,
    estimate_yaw_change,
    eval_seeds,
)
from wd_data.token_cache import TokenCacheDataset, TokenCacheError, write_token_cache

__version__ = "0.1.0"
