"""`wd data cache`: tokenize a source once into a token cache that `wd train` reads (kind `token_cache`).

Resumable (finished shards are kept, a rerun writes the rest), decoded in DataLoader worker processes, and
split over torchrun's ranks by environment alone (RANK, WORLD_SIZE, LOCAL_RANK): rank r writes every
WORLD_SIZE-th shard on its own device, and whichever rank finishes last lists the shards in the manifest, so no
rank waits on another and a rank killed midway only leaves its own shards to write again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from wd_data import write_token_cache
from wd_data.token_cache import finished_units, read_cache_manifest

from wd_cli.devices import resolve_device
from wd_cli.text_encoders import CachedTextEncoder, TextEncoder, load_text_encoder
from wd_cli.train.config import SourceConfig
from wd_cli.train.configfile import ConfigError
from wd_cli.train.data import open_source
from wd_cli.train.tokenizer import vqgan_dir
from wd_cli.train.trainer import open_tokenizer


@dataclass
class CacheSummary:
    """What one writer (rank) leaves behind."""

    cache_dir: Path
    rank: int
    world_size: int
    complete: bool
    finished_shards: int
    num_shards: int
    manifest: dict[str, Any]


def fingerprint(directory: str | Path) -> str:
    """A short hash of a model directory's config.json and its files' names and sizes: cheap, and enough to
    refuse resuming a cache with another tokenizer or text encoder."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(item for item in root.rglob("*") if item.is_file()):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
        if path.name == "config.json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def text_embedder(encoder: TextEncoder) -> Callable[[str], torch.Tensor]:
    """caption -> its real tokens' embeddings (L, C) (L = 0 for an empty caption)."""

    def embed(caption: str) -> torch.Tensor:
        text, mask = encoder.encode([caption])
        return text[0, mask[0]]

    return embed


def _device(name: str | None) -> torch.device:
    """--device, else this rank's GPU (LOCAL_RANK) when there is one, else the CPU."""
    if name is not None:
        return resolve_device(name)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
        torch.device("cpu")


def cache_source(source: SourceConfig, tokenizer: str, out_dir: str | Path, text_encoder: str | None = None, *,
                 num_samples: int | None = None, samples_per_shard: int = 256, workers: int = 0,
                 device: str | None = None, progress: bool = True) -> CacheSummary:
    """Tokenize `source` (and embed its captions with `text_encoder`) into `out_dir` as this rank's share."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if source.kind == "token_cache":
        raise ConfigError(f"{source.path} is already a token cache")
    if source.kind in ("shapes", "drive") and num_samples is None:
        raise ConfigError(f"a {source.kind} world is endless: give --samples N (the seeds 0..N-1)")
    opened = open_source(source, "SOURCE")
    target = _device(device)
    tokenizer_dir = vqgan_dir(tokenizer)  # resolved once: a run's damaged newest checkpoint is reported once
    vqgan = open_tokenizer(str(tokenizer_dir), target, "--tokenizer")
    encoder = None
    if text_encoder is not None:
        try:
            encoder = CachedTextEncoder(load_text_encoder(text_encoder, target))
        except (OSError, ValueError) as error:
            raise ConfigError(f"--text-encoder: {' '.join(str(error).split())}") from None
    path = source.path if source.path is None or "{" in source.path else str(Path(source.path).resolve())
    metadata = {"codebook_size": vqgan.codebook_size, "downsample_factor": vqgan.downsample_factor,
                "tokenizer": fingerprint(tokenizer_dir),
                "text_encoder": text_encoder and fingerprint(text_encoder),
                "source": {"kind": source.kind, "path": path, "options": source.options}}
    write_token_cache(opened.dataset, vqgan.encode_video, out_dir, samples_per_shard=samples_per_shard,
                      encode_text=text_embedder(encoder) if encoder is not None else None, metadata=metadata,
                      num_workers=workers, progress=progress and rank == 0, num_samples=num_samples, rank=rank,
                      world_size=world_size, max_skip_rate=source.max_skip_rate)
    manifest = read_cache_manifest(Path(out_dir))
    return CacheSummary(Path(out_dir), rank, world_size, manifest["complete"], len(finished_units(out_dir)),
                        manifest["plan"]["num_units"], manifest)


def summary_lines(summary: CacheSummary) -> list[str]:
    """What `wd data cache` prints when a writer is done."""
    manifest = summary.manifest
    if not summary.complete:
        return [f"rank {summary.rank} of {summary.world_size} done; {summary.finished_shards} of "
                f"{summary.num_shards} shards written, the other ranks' writers finish {summary.cache_dir}"]
    lines = [f"{summary.cache_dir}: {manifest['num_samples']} samples of {manifest['schema']['token_shape']} tokens "
             f"in {summary.num_shards} shards, {manifest['num_skipped']} skipped"
             if manifest["schema"] else f"{summary.cache_dir}: no samples, {manifest['num_skipped']} skipped"]
    lines += [f"  skipped {reason}" for reason in manifest["skip_reasons"]]
    return lines
