"""Image-caption pairs from a folder of image + .txt files; N images make one sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wd_data.datasets.base import SkippingDataset, check_counts, sample_generator
from wd_data.datasets.video_text import read_caption_file
from wd_data.image_io import read_image
from wd_data.transforms import Crop

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ImageTextConfig:
    """`source`: a folder of `name.jpg` + `name.txt` pairs (no .txt: no caption); tar shards are TarShardConfig's."""

    source: str | Path
    num_frames: int = 16  # independent images per sample (the paper: 16)
    size: int | tuple[int, int] | None = 256
    crop: Crop = "center"
    seed: int = 0
    # The N images share one text prompt, so their captions are joined in frame order.
    caption_separator: str = " | "

    def __post_init__(self) -> None:
        check_counts(num_frames=self.num_frames)


def image_sample(images: list[np.ndarray], captions: list[str], separator: str, meta: dict) -> dict[str, Any]:
    return {
        "frames": torch.from_numpy(np.stack(images)),
        "caption": separator.join(captions),
        "actions": None,
        "is_image": True,
        "meta": {**meta, "captions": captions},
    }


class ImageFolderDataset(SkippingDataset):
    """Sample i is the i-th group of `num_frames` images in a seeded shuffle (reshuffled per epoch).

    An undecodable image, or one whose caption file is not UTF-8, spoils its group (BadSampleError: training
    takes the next group, a token cache leaves it out), so no image serves two samples of an epoch. Tar shards
    group images in stored order instead and lose only the bad image."""

    def __init__(self, config: ImageTextConfig) -> None:
        self.config = config
        root = Path(config.source)
        if not root.is_dir():
            raise ValueError(f"{root}: not a folder")
        self.images = sorted(
            path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        )
        if len(self.images) < config.num_frames:
            raise ValueError(f"{root}: {len(self.images)} images, fewer than num_frames={config.num_frames}")
        self._cached_order: tuple[int | None, list[int]] = (None, [])

    def __len__(self) -> int:
        return len(self.images) // self.config.num_frames

    def _order(self, epoch: int) -> list[int]:
        """The epoch's shuffle of all images, computed once per epoch rather than per sample."""
        if self._cached_order[0] != epoch:
            generator = sample_generator(self.config.seed, epoch)
            self._cached_order = (epoch, torch.randperm(len(self.images), generator=generator).tolist())
        return self._cached_order[1]

    def load(self, index: int) -> dict[str, Any]:
        config = self.config
        order = self._order(self.epoch)
        generator = sample_generator(config.seed, self.epoch, index)
        paths = [self.images[image] for image in order[index * config.num_frames : (index + 1) * config.num_frames]]
        captions = [read_caption_file(path.with_suffix(".txt")) for path in paths]
        images = [read_image(path, config.size, config.crop, generator) for path in paths]
        meta = {"paths": [str(p) for p in paths], "index": index, "seed": config.seed, "epoch": self.epoch}
        return image_sample(images, captions, config.caption_separator, meta)
