"""Training data: weighted sources, a deterministic draw of every micro-batch, and token/text preparation.

Micro-batch (step, micro) comes from one source picked by weight from (seed, step, micro); its `batch_size`
global samples are the next ones of that source's seeded per-epoch permutation, and rank r takes the r-th
slice of them. The draw needs only the seed and the per-source positions (the data position saved in
checkpoints), so a resumed run and any number of ranks see exactly the samples of one uninterrupted process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
    TokenCacheDataset,
    TokenCacheError,
    VideoTextConfig,
    VideoTextDataset,
    collate_samples,
)
from wd_data.synthetic import TRAIN_SEEDS
from wd_tokenizer import VQGAN

from wd_cli.text_encoders import TextEncoder
from wd_cli.train.config import DataSection, SourceConfig
from wd_cli.train.configfile import ConfigError, from_dict

# kind -> (wd_data config class, the field that `path` fills) for the sources read from disk.
_FILE_SOURCES = {
    "video_text": (VideoTextConfig, "manifest", VideoTextDataset),
    "image_text": (ImageTextConfig, "source", ImageFolderDataset),
    "nuscenes": (NuScenesConfig, "dataroot", NuScenesDataset),
}
_WORLDS = {"shapes": (ShapesConfig, ShapesDataset), "drive": (DriveConfig, DriveDataset)}
# Stream ids, the last number given to `generator`, so that no two draws share a random stream.
SOURCE_STREAM, PERMUTATION_STREAM, MASK_STREAM = 0, 1, 2


@dataclass
class Source:
    """One opened source: a map-style dataset of sample dicts and its sampling weight."""

    dataset: Dataset
    weight: float
    tokenized: bool  # samples carry "tokens" (a token cache) rather than "frames"


def open_source(config: SourceConfig, key: str) -> Source:
    """Open `config` (named `key` in errors, e.g. data.sources.0); a missing path is a ConfigError."""
    if config.kind in _WORLDS:
        if config.path is not None:
            raise ConfigError(f"{key}.path: a {config.kind} world is synthetic and takes no path")
        config_class, dataset_class = _WORLDS[config.kind]
        return Source(dataset_class(from_dict(config_class, config.options, f"{key}.options"), TRAIN_SEEDS),
                      config.weight, tokenized=False)
    if config.path is None:
        raise ConfigError(f"{key}.path: missing (a {config.kind} source reads from disk)")
    if not Path(config.path).exists():
        raise ConfigError(f"{key}.path: {config.path} does not exist")
    if config.kind == "token_cache":
        if config.options:
            raise ConfigError(f"{key}.options: a token_cache source takes no options")
        try:
            return Source(TokenCacheDataset(config.path), config.weight, tokenized=True)
        except TokenCacheError as error:
            raise ConfigError(f"{key}.path: {error}") from None
    config_class, path_field, dataset_class = _FILE_SOURCES[config.kind]
    options = from_dict(config_class, {**config.options, path_field: config.path}, f"{key}.options")
    try:
        return Source(dataset_class(options), config.weight, tokenized=False)
    except (ValueError, RuntimeError, OSError) as error:
        raise ConfigError(f"{key}: {' '.join(str(error).split())}") from None


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


class DataStream:
    """Draws the samples of micro-batch (step, micro) for one rank; `positions` is the resumable state."""

    def __init__(self, sources: list[Source], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> None:
        if batch_size % world_size:
            raise ConfigError(f"data.batch_size: {batch_size} is not divisible by the {world_size} ranks")
        self.sources, self.batch_size, self.seed = sources, batch_size, seed
        self.rank, self.local_batch = rank, batch_size // world_size
        self.weights = torch.tensor([source.weight for source in sources], dtype=torch.float64)
        self.positions = [0] * len(sources)  # global samples drawn so far from each source
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
        start = self.positions[source] + self.rank * self.local_batch
        dataset = self.sources[source].dataset
        indices = [self._index(source, start + offset) for offset in range(self.local_batch)]
        load = self._pool.map if self._pool else map
        samples = list(load(dataset.__getitem__, indices))
        self.positions[source] += self.batch_size
        return samples

    def state_dict(self) -> dict[str, Any]:
        return {"positions": torch.tensor(self.positions, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        positions = state["positions"].tolist()
        if len(positions) != len(self.sources):
            raise ConfigError(f"data.sources: the checkpoint was written with {len(positions)} sources, "
                              f"the config has {len(self.sources)}")
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
