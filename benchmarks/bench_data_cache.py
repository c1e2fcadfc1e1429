"""Synthetic world render throughput and token-cache write/read throughput.

    uv run python benchmarks/bench_data_cache.py [--samples 2048] [--seconds 2]

Renders 16-frame clips of both worlds at 64x64 and 256x256, then writes a token cache of
16x16x16-token samples (with captions, 16x2 actions and a small meta) and reads it back by index
(sequential and shuffled) and through a DataLoader with 0 and 2 persistent workers (timed after
a warm-up epoch, so worker start-up is not counted). Prints one table per part
with ratios to the first row of that part, all measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wd_data import (
    DriveConfig,
    DriveWorld,
    ShapesConfig,
    ShapesWorld,
    TokenCacheDataset,
    collate_samples,
    write_token_cache,
)

TOKENS = (16, 16, 16)  # the paper's pre-training shape: 16 frames of 16x16 tokens


def rate(work: Callable[[int], int], seconds: float) -> float:
    """Items per second: call work(i) (returns the items it did) until `seconds` have passed."""
    work(0)  # warm-up: imports, first allocations, page cache
    done, start, call = 0, time.perf_counter(), 1
    while time.perf_counter() - start < seconds:
        done += work(call)
        call += 1
    return done / (time.perf_counter() - start)


class TinyFrames(Dataset):
    """Samples whose "frames" are already token-sized, so the write benchmark times the cache, not a tokenizer."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        return {
            "frames": torch.from_numpy(rng.integers(0, 256, (*TOKENS, 3), dtype=np.uint8)),
            "caption": f"a red circle moves left, sample {index}",
            "actions": torch.from_numpy(rng.normal(size=(TOKENS[0], 2)).astype(np.float32)),
            "is_image": False,
            "meta": {"seed": index},
        }


def encode(frames: torch.Tensor) -> torch.Tensor:
    """A stand-in tokenizer: (16, 16, 16, 3) uint8 -> (16, 16, 16) ids below 8192."""
    return frames[..., 0].long() * 32


def print_table(title: str, rows: list[tuple[str, float]], unit: str) -> None:
    print(f"\n{title}\n| case | {unit} | ratio |\n|---|---:|---:|")
    for name, value in rows:
        print(f"| {name} | {value:,.1f} | {value / rows[0][1]:.2f} |")


def bench_render(seconds: float) -> None:
    rows = []
    for size in (64, 256):
        for name, world in (
            ("shapes", ShapesWorld(ShapesConfig(height=size, width=size, num_frames=16))),
            ("drive", DriveWorld(DriveConfig(height=size, width=size, num_frames=16))),
        ):
            rows.append((f"{name} 16x{size}x{size}", rate(lambda seed, world=world: world.render(seed) and 1, seconds)))
    print_table("Synthetic worlds: 16-frame clips rendered per second (one process)", rows, "clips/s")


def bench_cache(samples: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = TinyFrames(samples)
        start = time.perf_counter()
        write_token_cache(source, encode, folder, samples_per_shard=256, progress=False)
        write_rate = samples / (time.perf_counter() - start)
        source_rate = rate(lambda i: len([source[(i * 64 + j) % samples] for j in range(64)]), seconds)
        print_table(
            f"Token cache write: {samples} samples of {TOKENS} tokens, shards of 256",
            [("building the source samples only", source_rate), ("write_token_cache (incl. building)", write_rate)],
            "samples/s",
        )

        cache = TokenCacheDataset(folder)
        order = np.random.default_rng(0).permutation(samples)
        rows = [
            ("index, sequential", rate(lambda i: len([cache[(i * 256 + j) % samples] for j in range(256)]), seconds)),
            ("index, random", rate(lambda i: len([cache[int(order[(i * 256 + j) % samples])] for j in range(256)]),
                                   seconds)),
        ]
        for workers in (0, 2):
            for shuffle in (False, True):
                loader = DataLoader(
                    cache, batch_size=32, shuffle=shuffle, num_workers=workers, collate_fn=collate_samples,
                    persistent_workers=workers > 0,
                )
                epochs = rate(lambda i, loader=loader: sum(len(batch["caption"]) for batch in loader), seconds)
                order_name = "random" if shuffle else "sequential"
                rows.append((f"DataLoader batch 32, {workers} workers, {order_name}", epochs))
        print_table(f"Token cache read: {samples} samples of {TOKENS} tokens (page cache warm)", rows, "samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048, help="samples in the token cache")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per render/index measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_render(args.seconds)
    bench_cache(args.samples, args.seconds)


if __name__ == "__main__":
    main()
