"""Training data: weighted sources, a deterministic draw of every micro-batch, and token/text preparation.

Micro-batch (step, micro) comes from one source picked by weight from (seed, step, micro) and holds `batch_size`
global samples; rank r takes the r-th slice of them. From a map-style source they are the next samples of its
seeded per-epoch permutation. A tar-shard source is read as `batch_size` lanes, slot j of every micro-batch being
the next sample of lane j: lane j reads the shards at positions j, j + batch_size, ... of the endless sequence of
per-epoch shard permutations, from start to end, so each rank opens only the shards of its own lanes. The draw
needs only the seed, the per-source positions and each lane's (sequence position, records read) -- the data state
saved in checkpoints -- so a resumed run and any number of ranks see exactly the samples of one uninterrupted
process. Bad samples are skipped and counted per source; a source past its `max_skip_rate` stops the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from wd_data import (
    DriveConfig,
    DriveDataset,
    ImageFolderDataset,
    ImageTextConfig,
    NuScenesConfig,
    NuScenesDataset,
    ShapesConfig,
    ShapesDataset,
    TarShardConfig,
    TarShardDataset,
    TokenCacheDataset,
    TokenCacheError,
    VideoTextConfig,
    VideoTextDataset,
    collate_samples,
)
from wd_data.datasets import SkipLog, check_skip_rate
from wd_data.datasets.tar_shards import ShardItem
from wd_data.errors import DataSourceError
from wd_data.synthetic import TRAIN_SEEDS
from wd_tokenizer import VQGAN

from wd_cli.text_encoders import TextEncoder
from wd_cli.train.config import DataSection, SourceConfig
from wd_cli.train.configfile import ConfigError, from_dict

# kind -> (wd_data config class, the field that `path` fills, dataset class) for the sources read from disk.
_FILE_SOURCES = {
    "video_text": (VideoTextConfig, "manifest", VideoTextDataset),
    "image_text": (ImageTextConfig, "source", ImageFolderDataset),
    "tar_shards": (TarShardConfig, "source", TarShardDataset),
    "nuscenes": (NuScenesConfig, "dataroot", NuScenesDataset),
}
_WORLDS = {"shapes": (ShapesConfig, ShapesDataset), "drive": (DriveConfig, DriveDataset)}
# Stream ids, the last number given to `generator`, so that no two draws share a random stream.
SOURCE_STREAM, PERMUTATION_STREAM, MASK_STREAM = 0, 1, 2


@dataclass
class Source:
    """One opened source: a dataset of sample dicts (map-style, or tar shards), its sampling weight, and how many
    of its samples may be skipped."""

    dataset: Dataset | TarShardDataset
    weight: float
    tokenized: bool  # samples carry "tokens" (a token cache) rather than "frames"
    name: str = ""  # how errors name it: "data.sources.0 (path)"
    max_skip_rate: float = 1.0

    def head(self, count: int) -> list[dict[str, Any]]:
        """The first `count` samples (fewer when the source has fewer): shapes, sample videos, tokenizer clips."""
        if isinstance(self.dataset, TarShardDataset):
            return self.dataset.head(count)
        return [self.dataset[index] for index in range(min(count, len(self.dataset)))]

    @property
    def skips(self) -> SkipLog:
        """This process's count of samples read and skipped (synthetic worlds never skip)."""
        return getattr(self.dataset, "skips", None) or SkipLog()


def _open_dataset(config: SourceConfig, key: str) -> tuple[Dataset | TarShardDataset, bool]:
    """(dataset, tokenized) for `config`; a missing path or bad options are a ConfigError."""
    if config.kind in _WORLDS:
        if config.path is not None:
            raise ConfigError(f"{key}.path: a {config.kind} world is synthetic and takes no path")
        config_class, dataset_class = _WORLDS[config.kind]
        return dataset_class(from_dict(config_class, config.options, f"{key}.options"), TRAIN_SEEDS), False
    if config.path is None:
        raise ConfigError(f"{key}.path: missing (a {config.kind} source reads from disk)")
    if config.kind != "tar_shards" and not Path(config.path).exists():  # shards may be a brace pattern or pipe:
        raise ConfigError(f"{key}.path: {config.path} does not exist")
    if config.kind == "token_cache":
        if config.options:
            raise ConfigError(f"{key}.options: a token_cache source takes no options")
        try:
            return TokenCacheDataset(config.path), True
        except TokenCacheError as error:
            raise ConfigError(f"{key}.path: {error}") from None
    config_class, path_field, dataset_class = _FILE_SOURCES[config.kind]
    options = from_dict(config_class, {**config.options, path_field: config.path}, f"{key}.options")
    try:
        return dataset_class(options), False
    except (ValueError, RuntimeError, OSError) as error:
        raise ConfigError(f"{key}: {' '.join(str(error).split())}") from None


def open_source(config: SourceConfig, key: str) -> Source:
    """Open `config` (named `key` in errors, e.g. data.sources.0); a missing path is a ConfigError."""
    dataset, tokenized = _open_dataset(config, key)
    name = f"{key} ({config.path})" if config.path is not None else f"{key} ({config.kind})"
    return Source(dataset, config.weight, tokenized, name, config.max_skip_rate)


def open_sources(section: DataSection) -> list[Source]:
    return [open_source(source, f"data.sources.{index}") for index, source in enumerate(section.sources)]


def cache_property(sources: list[Source], name: str) -> int | None:
    """The one value of token-cache metadata `name` (codebook_size) or schema text_dim over the sources;
    a ConfigError when caches disagree."""
    values = set()
    for source in sources:
        if isinstance(source.dataset, TokenCacheDataset):
            manifest = source.dataset.manifest
            value = manifest["schema"].get(name) if name == "text_dim" else manifest["metadata"].get(name)
            if value is not None:
                values.add(int(value))
    if len(values) > 1:
        raise ConfigError(f"data.sources: token caches disagree on {name}: {sorted(values)}")
    return values.pop() if values else None


def _mix(*numbers: int) -> int:
    """A 63-bit seed from integers (seed, step, micro, ...): distinct tuples give unrelated streams."""
    value = 0x9E3779B97F4A7C15
    for number in numbers:
        value = ((value ^ (number & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def generator(*numbers: int) -> torch.Generator:
    """A CPU generator seeded from integers (see `_mix`)."""
    return torch.Generator().manual_seed(_mix(*numbers))


class ShardLanes:
    """A tar-shard source read as `batch_size` lanes (see the module docstring); `state` row j is lane j's
    (position in the shard sequence, records of that shard read)."""

    def __init__(self, dataset: TarShardDataset, source: int, seed: int, batch_size: int) -> None:
        self.dataset, self.source, self.seed, self.batch_size = dataset, source, seed, batch_size
        self.state = [[lane, 0] for lane in range(batch_size)]
        self._items: dict[int, Iterator[ShardItem]] = {}  # lane -> its open shard, read up to `state`
        self._permutation: tuple[int | None, list[int]] = (None, [])

    def _shard(self, sequence: int) -> int:
        """The shard at `sequence` in the concatenation of per-epoch shard permutations."""
        count = len(self.dataset.shards)
        epoch = sequence // count
        cached = self._permutation  # one read: lanes on other threads may be replacing it for another epoch
        if cached[0] != epoch:
            shuffle = generator(self.seed, self.source, epoch, PERMUTATION_STREAM)
            cached = self._permutation = (epoch, torch.randperm(count, generator=shuffle).tolist())
        return cached[1][sequence % count]

    def next(self, lane: int) -> dict[str, Any]:
        """Lane `lane`'s next sample; bad records are passed over (and counted in the dataset's skips)."""
        fruitless = 0  # shards passed without a sample
        while True:
            sequence, start = self.state[lane]
            if lane not in self._items:
                self._items[lane] = self.dataset.read_samples(self._shard(sequence), start, draw=sequence)
            for item in self._items[lane]:
                self.state[lane] = [sequence, item.position]
                return item.sample
            del self._items[lane]
            self.state[lane] = [sequence + self.batch_size, 0]
            fruitless += 1
            if fruitless >= len(self.dataset.shards) and not self.dataset.skips.read:
                raise DataSourceError(f"{self.dataset.config.source}: no sample in {fruitless} shards; first: "
                                      f"{(self.dataset.skips.reasons or ['no records'])[0]}")

    def load_state(self, state: list[list[int]]) -> None:
        self.state = [list(row) for row in state]
        self._items.clear()


class DataStream:
    """Draws the samples of micro-batch (step, micro) for one rank; `state_dict` is the resumable position."""

    def __init__(self, sources: list[Source], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> None:
        if batch_size % world_size:
            raise ConfigError(f"data.batch_size: {batch_size} is not divisible by the {world_size} ranks")
        self.sources, self.batch_size, self.seed = sources, batch_size, seed
        self.rank, self.world_size, self.local_batch = rank, world_size, batch_size // world_size
        self.weights = torch.tensor([source.weight for source in sources], dtype=torch.float64)
        self.positions = [0] * len(sources)  # global samples drawn so far from each source
        self.lanes = {index: ShardLanes(source.dataset, index, seed, batch_size)
                      for index, source in enumerate(sources) if isinstance(source.dataset, TarShardDataset)}
        self._permutation: dict[int, tuple[int, torch.Tensor]] = {}  # source -> (epoch, its permutation)
        # Threads suffice: PyAV decoding and numpy rendering release the GIL; map keeps the order.
        self._pool = ThreadPoolExecutor(num_workers) if num_workers else None

    def _index(self, source: int, position: int) -> int:
        size = len(self.sources[source].dataset)
        epoch = position // size
        if self._permutation.get(source, (None,))[0] != epoch:
            shuffle = generator(self.seed, source, epoch, PERMUTATION_STREAM)
            self._permutation[source] = (epoch, torch.randperm(size, generator=shuffle))
        return int(self._permutation[source][1][position % size])

    def draw(self, step: int, micro: int) -> list[dict[str, Any]]:
        """-> this rank's samples of micro-batch (step, micro); advances `positions`."""
        source = int(torch.multinomial(self.weights, 1, generator=generator(self.seed, step, micro, SOURCE_STREAM))[0])
        slots = range(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        load = self._pool.map if self._pool else map
        if source in self.lanes:
            samples = list(load(self.lanes[source].next, slots))
        else:
            indices = [self._index(source, self.positions[source] + slot) for slot in slots]
            samples = list(load(self.sources[source].dataset.__getitem__, indices))
        self.positions[source] += self.batch_size
        return samples

    @property
    def num_skipped(self) -> int:
        """Samples skipped by this rank so far, over all sources."""
        return sum(source.skips.skipped for source in self.sources)

    def skip_totals(self, device: torch.device) -> dict[str, int]:
        """{"samples_read", "samples_skipped"} summed over sources and ranks (every rank must call it); a
        DataSourceError when a source skipped more than its max_skip_rate."""
        counts = torch.tensor([[source.skips.read, source.skips.skipped] for source in self.sources],
                              dtype=torch.float64, device=device)
        if self.world_size > 1:
            dist.all_reduce(counts)
        for source, (read, skipped) in zip(self.sources, counts.long().tolist(), strict=True):
            check_skip_rate(read, skipped, source.max_skip_rate, source.name, (source.skips.reasons or [""])[0])
        read, skipped = counts.sum(dim=0).long().tolist()
        return {"samples_read": read, "samples_skipped": skipped}

    def state_dict(self) -> dict[str, Any]:
        """Positions, and every lane's state gathered from the rank that reads it (every rank must call it)."""
        state = {"positions": torch.tensor(self.positions, dtype=torch.long)}
        for index, lanes in self.lanes.items():
            rows = lanes.state
            if self.world_size > 1:
                gathered: list[Any] = [None] * self.world_size
                dist.all_gather_object(gathered, lanes.state[self.rank * self.local_batch:
                                                             (self.rank + 1) * self.local_batch])
                rows = [row for part in gathered for row in part]
            state[f"lanes.{index}"] = torch.tensor(rows, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        positions = state["positions"].tolist()
        if len(positions) != len(self.sources):
            raise ConfigError(f"data.sources: the checkpoint was written with {len(positions)} sources, "
                              f"the config has {len(self.sources)}")
        for index, lanes in self.lanes.items():
            rows = state.get(f"lanes.{index}")
            if rows is None or len(rows) != self.batch_size:
                found = "no lanes" if rows is None else f"{len(rows)} lanes"
                raise ConfigError(f"data.sources.{index}: the checkpoint holds {found} for these tar shards, the "
                                  f"config reads them in data.batch_size = {self.batch_size}")
            lanes.load_state(rows.tolist())
        self.positions = positions


@dataclass
class TokenBatch:
    """A micro-batch ready for STPT: tokens int64 (B, N, h, w), text (B, L, C) + text_mask (B, L) or None,
    actions (B, N, A) or None, is_image bool (B,), all on the training device."""

    tokens: torch.Tensor
    text: torch.Tensor | None
    text_mask: torch.Tensor | None
    actions: torch.Tensor | None
    is_image: torch.Tensor


class BatchPreparer:
    """Collates samples, tokenizes frames with the tokenizer and encodes captions with the text encoder where
    the source has no stored text embeddings."""

    def __init__(self, device: torch.device, tokenizer: VQGAN | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        self.device, self.tokenizer, self.text_encoder = device, tokenizer, text_encoder

    @torch.no_grad()
    def __call__(self, samples: list[dict[str, Any]]) -> TokenBatch:
        batch = collate_samples(samples)
        if "tokens" in batch:
            tokens = batch["tokens"]
        else:
            frames = batch["frames"]  # uint8 (B, N, H, W, 3)
            tokens = torch.stack([self.tokenizer.encode_video(clip) for clip in frames])
        text, text_mask = batch.get("text"), batch.get("text_mask")
        if text is None and self.text_encoder is not None:
            text, text_mask = self.text_encoder.encode(batch["caption"])
        text, text_mask, actions = (None if tensor is None else tensor.to(self.device)
                                    for tensor in (text, text_mask, batch["actions"]))
        return TokenBatch(tokens.to(self.device), text, text_mask, actions, batch["is_image"].to(self.device))
