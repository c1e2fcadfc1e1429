"""Tar shards as img2dataset writes them (LAION: key.jpg + key.txt + key.json) or video shards (WebVid-style:
key.mp4 + key.txt), read with webdataset one shard at a time, in stored order.

Reading is positional: `read_shard(shard, start)` yields every sample (or the error that spoiled it) with the
number of the shard's records consumed once it is done, so a reader can stop anywhere and continue later from
(shard, position) alone. wd train's per-rank lanes and the token cache writer build on that.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander
from torch.utils.data import IterableDataset, get_worker_info

from wd_data.datasets.base import SkipCounter, check_counts, sample_generator
from wd_data.datasets.image_text import image_sample
from wd_data.datasets.video_text import random_clip
from wd_data.errors import BadSampleError, DataSourceError
from wd_data.image_io import read_image
from wd_data.transforms import Crop

MEDIA_EXTENSIONS = {"video": ("mp4", "webm", "mkv", "avi", "mov"), "image": ("jpg", "jpeg", "png", "webp")}


@dataclass
class TarShardConfig:
    """`source`: a folder of .tar files, one .tar, a brace pattern ("laion/{00000..00999}.tar", webdataset's
    syntax, `pipe:` commands included) or a list. Image shards give samples of `num_frames` independent images
    (the paper: 16), video shards one clip of `num_frames` frames per video."""

    source: str | Path | Sequence[str]
    media: Literal["auto", "image", "video"] = "auto"  # auto: that of the first record
    num_frames: int = 16
    size: int | tuple[int, int] | None = 256
    fps: float | None = None  # video: frames per second picked; None with frame_stride None: every frame
    frame_stride: int | None = None
    crop: Crop = "center"
    seed: int = 0
    caption_separator: str = " | "  # image shards: the N images share one prompt, captions joined in order

    def __post_init__(self) -> None:
        check_counts(num_frames=self.num_frames, frame_stride=self.frame_stride)


def expand_shards(source: str | Path | Sequence[str]) -> list[str]:
    """The shard list of a folder (its .tar files, sorted), a brace pattern, one file, or a list."""
    if isinstance(source, list | tuple):
        return [str(url) for url in source]
    if Path(source).is_dir():
        return sorted(str(path) for path in Path(source).glob("*.tar"))
    return wds.shardlists.expand_urls(str(source))


def record_caption(record: dict[str, Any]) -> str:
    """The .txt member, else the caption field of the .json member (img2dataset writes both); BadSampleError
    when neither gives a string, or the text is not UTF-8, or the .json does not parse."""
    try:
        if "txt" in record:
            return record["txt"].decode("utf-8").strip()
        if "json" in record:
            meta = json.loads(record["json"])
            caption = meta.get("caption") if isinstance(meta, dict) else None
            if not isinstance(caption, str):
                raise BadSampleError(f"the .json member has no caption string (caption: {caption!r})")
            return caption.strip()
    except UnicodeDecodeError as error:
        raise BadSampleError(f"caption is not UTF-8 ({error})") from None
    except json.JSONDecodeError as error:
        raise BadSampleError(f"the .json member does not parse ({error})") from None
    raise BadSampleError("no caption (.txt or .json member)")


def _unreadable(error: Exception) -> BadSampleError:
    """A tar reader's error as a bad record, its message on one line. webdataset passes some errors on with extra
    arguments (message, None, None), whose str() is a tuple's repr: only the message is kept."""
    message = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    return BadSampleError(f"unreadable tar ({' '.join(message.split())})")


def _ends_like_a_tar(url: str) -> bool:
    """Whether a local file ends with the two zero blocks every tar writer appends (tarfile reads a truncated
    archive as a shorter one without a word); True for anything not on the local disk (e.g. `pipe:` commands)."""
    path = Path(url)
    if not path.is_file():
        return True
    size = path.stat().st_size
    with path.open("rb") as file:
        file.seek(max(0, size - 1024))
        return size % 512 == 0 and size >= 1024 and not any(file.read())


@dataclass
class ShardItem:
    """One step of reading a shard: a sample, or the error that spoiled a record (or the rest of the shard)."""

    position: int  # records of the shard consumed once this item is done
    where: str  # "shard:key" of the (first) record
    sample: dict[str, Any] | None
    error: BadSampleError | None = None


class TarShardDataset(SkipCounter, IterableDataset):
    """Tar shards; iterating streams them split over ranks and DataLoader workers (shard order reshuffled per
    epoch), while `read_shard` reads one shard from any record on, for resumable readers."""

    epoch = 0

    def __init__(self, config: TarShardConfig) -> None:
        self.config = config
        self.shards = expand_shards(config.source)
        if not self.shards:
            raise ValueError(f"{config.source}: no .tar shards")
        self.media = config.media if config.media != "auto" else self._first_media()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the shard order and draw new clip starts and crops in the next pass."""
        self.epoch = epoch

    def records(self, shard: int) -> Iterator[dict[str, Any] | BadSampleError]:
        """The shard's records (webdataset groups members by key) in stored order, and an error wherever a member
        or the tar itself could not be read (a truncated tar ends with one)."""
        url = self.shards[shard]
        errors: list[Exception] = []

        def keep(error: Exception) -> bool:
            errors.append(error)
            return True  # go on reading

        try:
            stream = wds.gopen(url)
        except Exception as error:  # any failure to open is the shard's, reported as one bad record
            yield _unreadable(error)
            return
        # webdataset's own opener never closes the file, so every shard read left it to the garbage collector (a
        # ResourceWarning wherever that ran); here it closes when the records end or the reader drops them.
        try:
            for record in group_by_keys(tar_file_expander([{"url": url, "stream": stream}], handler=keep),
                                        handler=keep):
                yield from (_unreadable(error) for error in errors)
                errors.clear()
                yield record
            yield from (_unreadable(error) for error in errors)
        finally:
            stream.close()
        if not errors and not _ends_like_a_tar(url):
            yield BadSampleError("truncated tar: no end-of-archive blocks; records after the last read are lost")

    def _first_media(self) -> str:
        for shard in range(len(self.shards)):
            for record in self.records(shard):
                for media, extensions in MEDIA_EXTENSIONS.items():
                    if isinstance(record, dict) and any(extension in record for extension in extensions):
                        return media
        raise ValueError(f"{self.config.source}: no shard holds an image or a video")

    def _media_bytes(self, record: dict[str, Any]) -> bytes:
        for extension in MEDIA_EXTENSIONS[self.media]:
            if extension in record:
                return record[extension]
        raise BadSampleError(f"no {self.media} member ({', '.join(MEDIA_EXTENSIONS[self.media])})")

    def read_shard(self, shard: int, start: int = 0, draw: int = 0) -> Iterator[ShardItem]:
        """Items of shard `shard` after its first `start` records. Random clip starts and crops are seeded by
        (seed, draw, shard, record): pass a new `draw` to see the shard anew. Images left over at the end of
        a shard (fewer than num_frames) make no sample."""
        config, url = self.config, self.shards[shard]
        group: list[tuple[str, np.ndarray, str]] = []  # (key, image, caption) of the sample being collected
        position = 0
        for record in self.records(shard):
            if isinstance(record, BadSampleError):
                if position >= start:  # errors before `start` were met by whoever read up to there
                    yield ShardItem(position, url, None, record)
                continue
            position += 1
            if position <= start:
                continue
            where = f"{url}:{record['__key__']}"
            generator = sample_generator(config.seed, draw, shard, position)
            try:
                caption, data = record_caption(record), self._media_bytes(record)
                if self.media == "video":
                    frames, clip_start = random_clip(data, config.num_frames, generator, fps=config.fps,
                                                     frame_stride=config.frame_stride, size=config.size,
                                                     crop=config.crop)
                    meta = {"shard": url, "key": record["__key__"], "start": clip_start, "draw": draw}
                    sample = {"frames": torch.from_numpy(frames), "caption": caption, "actions": None,
                              "is_image": False, "meta": meta}
                    yield ShardItem(position, where, sample)
                    continue
                group.append((record["__key__"], read_image(data, config.size, config.crop, generator), caption))
            except BadSampleError as error:
                yield ShardItem(position, where, None, error)
                continue
            if len(group) == config.num_frames:
                keys, images, captions = (list(column) for column in zip(*group, strict=True))
                meta = {"shard": url, "keys": keys, "draw": draw}
                yield ShardItem(position, f"{url}:{keys[0]}", image_sample(images, captions,
                                                                          config.caption_separator, meta))
                group = []

    def read_samples(self, shard: int, start: int = 0, draw: int = 0) -> Iterator[ShardItem]:
        """`read_shard`'s samples alone: the bad records are counted in `skips` (and logged) and passed over."""
        for item in self.read_shard(shard, start, draw):
            if item.error is not None:
                self.skips.skip(item.where, item.error)
                continue
            self.skips.read += 1
            yield item

    def head(self, count: int) -> list[dict[str, Any]]:
        """The first `count` samples in stored order (fewer when the shards hold fewer)."""
        items = (item for shard in range(len(self.shards)) for item in self.read_samples(shard))
        return [item.sample for item in itertools.islice(items, count)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        order = torch.randperm(len(self.shards), generator=sample_generator(self.config.seed, self.epoch)).tolist()
        read_before = self.skips.read
        for shard in order[rank * workers + worker_id :: world * workers]:
            yield from (item.sample for item in self.read_samples(shard, draw=self.epoch))
        if self.skips.read == read_before and self.num_skipped:
            # An empty pass would let a training loop spin through empty epochs forever.
            raise DataSourceError(f"{self.config.source}: nothing decodable, {self.num_skipped} records skipped; "
                                  f"first: {self.skips.reasons[0]}")
