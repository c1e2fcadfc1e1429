"""Is `wd data cache` decode-bound? Its samples/s on 720p and 256p mp4 sources with 0, 1 and 2 decoding workers,
beside decoding alone and tokenizing alone, measured in the same run; and its peak memory on a source and on
one four times as long (bounded: it must not grow with the dataset).

    uv run python benchmarks/bench_cache_command.py            # --videos 8 --seconds 4 by default
    uv run python benchmarks/bench_cache_command.py --quick    # a tiny run that checks the script works

A sample is 16 frames at 256x256 picked at 8 fps (the paper's pre-training sample). Sources: H.264 videos of a
panning texture at 1280x720 and at 256x256 (24 fps), listed in a CSV manifest as `wd data cache` reads it.
- decoding alone: the VideoTextDataset the cache reads, through a DataLoader with the same worker count;
- tokenizing alone: the VQGAN's `encode_video` on samples already in memory, in this process;
- cache: `wd data cache`'s code path (`cache_source`), with the VQGAN, and with a stand-in tokenizer (a pixel
  subsample: "a tokenizer fast enough", e.g. one on a GPU) that leaves the decoding and the cache's own work;
- peak memory: resident set of the `wd data cache` process and its workers (Linux /proc), polled.
Ratios: cache / decoding alone at the same worker count (target >= 0.8 with the stand-in tokenizer).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from wd_data import VideoTextConfig, VideoTextDataset, write_token_cache, write_video
from wd_tokenizer import VQGAN, get_config

WORKERS = (0, 1, 2)
FRAMES, SIZE, FPS = 16, 256, 8.0


def write_source(folder: Path, height: int, width: int, videos: int, seconds: float) -> Path:
    """`videos` mp4 files of a panning texture and a CSV manifest of them; -> the manifest."""
    folder.mkdir(parents=True)
    count = int(seconds * 24)
    for index in range(videos):
        rng = np.random.default_rng(index)
        small = rng.integers(0, 256, (height // 16, (width + 4 * count) // 16 + 1, 3), dtype=np.uint8)
        wide = np.asarray(Image.fromarray(small).resize((16 * small.shape[1], height), Image.Resampling.BICUBIC))
        write_video(folder / f"{index}.mp4", (wide[:, 4 * i : 4 * i + width] for i in range(count)), fps=24)
    manifest = folder / "manifest.csv"
    manifest.write_text("path,caption\n" + "".join(f"{index}.mp4,video {index}\n" for index in range(videos)))
    return manifest


def dataset(manifest: Path, frames: int, size: int) -> VideoTextDataset:
    return VideoTextDataset(VideoTextConfig(manifest, num_frames=frames, size=size, fps=FPS))


def decode_rate(manifest: Path, workers: int, frames: int, size: int) -> float:
    """Samples/s reading every sample through a DataLoader (worker start-up included, as in a cache run)."""
    loader = DataLoader(dataset(manifest, frames, size), batch_size=None, num_workers=workers, collate_fn=lambda s: s)
    started = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - started)


def tokenize_rate(manifest: Path, vqgan: VQGAN, frames: int, size: int, count: int) -> float:
    source = dataset(manifest, frames, size)
    samples = [source[index % len(source)]["frames"] for index in range(count)]
    vqgan.encode_video(samples[0])  # warm-up
    started = time.perf_counter()
    for clip in samples:
        vqgan.encode_video(clip)
    return count / (time.perf_counter() - started)


def stand_in(frames: torch.Tensor) -> torch.Tensor:
    """A tokenizer that costs nothing: one channel of every 16th pixel, (N, H/16, W/16) ids."""
    return torch.as_tensor(frames)[:, ::16, ::16, 0].long()


def cache_rate(manifest: Path, encode, workers: int, frames: int, size: int, out: Path) -> float:
    """Samples/s of `write_token_cache` over the source (shards of 2 samples, so workers share the units)."""
    source = dataset(manifest, frames, size)
    started = time.perf_counter()
    write_token_cache(source, encode, out, samples_per_shard=2, num_workers=workers, progress=False)
    return len(source) / (time.perf_counter() - started)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (Linux /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


def peak_memory(manifest: Path, tokenizer: Path, repeat: int, workers: int, frames: int, size: int,
                out: Path) -> float:
    """Peak MiB of `wd data cache` over the manifest's rows repeated `repeat` times."""
    rows = manifest.read_text().splitlines()
    longer = manifest.with_name(f"repeat{repeat}.csv")
    longer.write_text("\n".join(rows[:1] + rows[1:] * repeat) + "\n")
    command = [sys.executable, "-m", "wd_cli", "data", "cache", str(longer), "--tokenizer", str(tokenizer), "--out",
               str(out), "--frames", str(frames), "--size", str(size), "--fps", str(FPS), "--workers", str(workers),
               "--samples-per-shard", "2", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.05)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    return peak / 2**20


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n| {' | '.join(header)} |\n|{'---|' * len(header)}")
    for row in rows:
        print(f"| {' | '.join(row)} |")


def main() -> None:
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="videos per source (one sample each)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    parser.add_argument("--tokenizer", default="f16-small", help="wd_tokenizer preset (untrained; speed only)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = parser.parse_args()
    frames, size = (4, 64) if args.quick else (FRAMES, SIZE)
    sources = [("256p", 256, 256)] if args.quick else [("720p", 720, 1280), ("256p", 256, 256)]
    videos, seconds = (4, 1.0) if args.quick else (args.videos, args.seconds)
    torch.set_num_threads(1)
    vqgan = VQGAN(get_config(args.tokenizer)).eval()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        vqgan.save_pretrained(root / "tokenizer")
        print(f"{videos} videos of {seconds:g} s per source; samples of {frames} frames at {size}x{size}, {FPS:g} fps; "
              f"tokenizer {args.tokenizer} ({sum(p.numel() for p in vqgan.parameters()) / 1e6:.1f}M parameters); "
              f"{os.cpu_count()} CPU cores, torch threads 1")
        for name, height, width in sources:
            manifest = write_source(root / name, height, width, videos, seconds)
            tokens = tokenize_rate(manifest, vqgan, frames, size, count=2 if args.quick else 4)
            rows = []
            for workers in WORKERS:
                decoded = decode_rate(manifest, workers, frames, size)
                real = cache_rate(manifest, vqgan.encode_video, workers, frames, size, root / f"{name}-{workers}")
                fast = cache_rate(manifest, stand_in, workers, frames, size, root / f"{name}-{workers}-fast")
                rows.append([str(workers), f"{decoded:.2f}", f"{tokens:.2f}", f"{real:.2f}", f"{fast:.2f}",
                             f"{real / decoded:.2f}", f"{fast / decoded:.2f}"])
            table(f"{name} source ({width}x{height}): samples/s",
                  ["workers", "decoding alone", "tokenizing alone", "cache", "cache, stand-in tokenizer",
                   "cache / decoding", "stand-in cache / decoding"], rows)
        name = sources[-1][0]
        manifest = root / name / "manifest.csv"
        repeats = (1, 4)  # the same videos listed once and four times: a dataset four times as long
        memory = [peak_memory(manifest, root / "tokenizer", repeat, 2, frames, size, root / f"memory-{repeat}")
                  for repeat in repeats]
        table(f"peak memory of `wd data cache` on the {name} source, 2 workers (process + workers)",
              ["samples", "peak MiB", "ratio"],
              [[str(videos * repeat), f"{mib:.0f}", f"{mib / memory[0]:.2f}"]
               for repeat, mib in zip(repeats, memory, strict=True)])


if __name__ == "__main__":
    main()
