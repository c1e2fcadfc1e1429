"""Image-caption pairs (a folder of image + .txt files, or img2dataset tar shards); N images make one sample."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from wd_data.datasets.base import SkipCounter, SkippingDataset, check_counts, sample_generator
from wd_data.errors import MediaReadError
from wd_data.image_io import read_image
from wd_data.transforms import Crop

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ImageTextConfig:
    """`source`: a folder of `name.jpg` + `name.txt` pairs, or tar shards (a list, or a brace pattern such
    as "shards/{00000..00099}.tar") holding `key.jpg` + `key.txt` + `key.json` as img2dataset writes them."""

    source: str | Path | Sequence[str]
    num_frames: int = 16  # independent images per sample (the paper: 16)
    size: int | tuple[int, int] | None = 256
    crop: Crop = "center"
    seed: int = 0
    # The N images share one text prompt, so their captions are joined in frame order.
    caption_separator: str = " | "
    shuffle_buffer: int = 1000  # tar shards only: samples held for shuffling

    def __post_init__(self) -> None:
        check_counts(num_frames=self.num_frames, shuffle_buffer=self.shuffle_buffer)


def _image_sample(images: list[np.ndarray], captions: list[str], separator: str, meta: dict) -> dict[str, Any]:
    return {
        "frames": torch.from_numpy(np.stack(images)),
        "caption": separator.join(captions),
        "actions": None,
        "is_image": True,
        "meta": {**meta, "captions": captions},
    }


class ImageFolderDataset(SkippingDataset):
    """Sample i is the i-th group of `num_frames` images in a seeded shuffle (reshuffled per epoch);
    an undecodable image is replaced by the next image of the shuffle."""

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
        images, paths, position = [], [], index * config.num_frames
        # Walk the shuffle from this group's start; bad images push the walk on, at most once round.
        for offset in range(len(order)):
            path = self.images[order[(position + offset) % len(order)]]
            try:
                images.append(read_image(path, config.size, config.crop, generator))
            except MediaReadError as error:
                self._skip(f"image {path}", error)
                continue
            paths.append(path)
            if len(images) == config.num_frames:
                captions = [_read_caption(path) for path in paths]
                meta = {"paths": [str(p) for p in paths], "index": index, "seed": config.seed, "epoch": self.epoch}
                return _image_sample(images, captions, config.caption_separator, meta)
        raise MediaReadError(f"{config.source}: fewer than {config.num_frames} readable images")


def _read_caption(image_path: Path) -> str:
    caption_path = image_path.with_suffix(".txt")
    return caption_path.read_text(encoding="utf-8").strip() if caption_path.exists() else ""


class ImageTextShards(SkipCounter, IterableDataset):
    """Streams tar shards (split over nodes and DataLoader workers), shuffles within a buffer, and groups
    `num_frames` decodable images into a sample; one pass over the shards is one epoch."""

    epoch = 0

    def __init__(self, config: ImageTextConfig) -> None:
        self.config = config
        # A single string may be a brace pattern, which SimpleShardList expands.
        source = config.source
        self.urls = str(source) if isinstance(source, (str, Path)) else [str(url) for url in source]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle shards and samples differently in the next pass."""
        self.epoch = epoch

    def _on_error(self, error: Exception) -> bool:
        self._skip("a tar member", error)
        return True  # keep streaming

    def __iter__(self) -> Iterator[dict[str, Any]]:
        config = self.config
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        generator = sample_generator(config.seed, self.epoch, worker_id)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.urls, seed=sample_generator(config.seed, self.epoch).initial_seed()),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self._on_error),
            wds.shuffle(config.shuffle_buffer, seed=int(generator.initial_seed() % 2**31)),
        )
        images, captions, keys = [], [], []
        num_read, skipped_before = 0, self.num_skipped
        for record in pipeline:
            image_key = next((ext[1:] for ext in IMAGE_EXTENSIONS if ext[1:] in record), None)
            try:
                if image_key is None:
                    raise MediaReadError(f"{record.get('__url__')}: member {record['__key__']} has no image")
                images.append(read_image(record[image_key], config.size, config.crop, generator))
            except MediaReadError as error:
                self._skip(f"image {record['__key__']}", error)
                continue
            num_read += 1
            captions.append(_record_caption(record))
            keys.append(record["__key__"])
            if len(images) == config.num_frames:
                meta = {"keys": keys, "seed": config.seed, "epoch": self.epoch, "worker": worker_id}
                yield _image_sample(images, captions, config.caption_separator, meta)
                images, captions, keys = [], [], []
        num_failed = self.num_skipped - skipped_before
        if num_failed and not num_read:
            # An empty pass would let a training loop spin through empty epochs forever.
            raise RuntimeError(f"{self.urls}: nothing decodable, {num_failed} members skipped; see the warnings above")


def _record_caption(record: dict[str, Any]) -> str:
    """The .txt member, else the caption field of the .json member (img2dataset writes both)."""
    if "txt" in record:
        return record["txt"].decode("utf-8").strip()
    if "json" in record:
        return str(json.loads(record["json"]).get("caption") or "").strip()
    return ""
