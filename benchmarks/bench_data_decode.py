"""Can video decoding keep STPT fed? Decode throughput of 16-frame 256x256 clips from a 720p mp4 with
0, 2 and 4 DataLoader workers, against the time the `base` STPT needs per training step.

    uv run python benchmarks/bench_data_decode.py [--clips 24] [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from wd_data import VideoTextConfig, VideoTextDataset, collate_samples, iter_frames, probe_video, write_video

NUM_FRAMES, SIZE, TOKENS = 16, 256, 16  # the paper's pre-training sample: 16 frames at 256x256 -> 16x16 tokens
WORKERS = (0, 2, 4)


def write_720p_video(path: Path, seconds: float = 4.0, fps: int = 24) -> None:
    """A panning textured scene (not noise, not flat) so H.264 decodes at a realistic cost."""
    num_frames = int(seconds * fps)
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (720 // 8, (1280 + 6 * num_frames) // 8, 3), dtype=np.uint8))
    texture = np.asarray(wide.resize((1280 + 6 * num_frames, 720), Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL))
    write_video(path, (texture[:, 6 * i : 6 * i + 1280] for i in range(num_frames)), fps=fps)


def decode_throughput(manifest: Path, workers: int) -> tuple[float, float]:
    """(frames/s, seconds to the first batch) reading every clip of the manifest through a DataLoader."""
    dataset = VideoTextDataset(VideoTextConfig(manifest, num_frames=NUM_FRAMES, size=SIZE, crop="random"))
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_samples)
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    rest = sum(1 for _ in iterator)
    # Steady state: the first batch pays for worker start-up and is timed separately.
    return rest * NUM_FRAMES / (time.perf_counter() - first), first - started


def sequential_throughput(video: Path) -> float:
    """frames/s decoding, resizing and cropping every frame in order: the ceiling for one process."""
    started = time.perf_counter()
    count = sum(1 for _ in iter_frames(video, size=SIZE))
    return count / (time.perf_counter() - started)


def stpt_step(steps: int) -> tuple[float, float]:
    """(seconds per forward+backward+AdamW step, training FLOP per step) of `base` STPT, batch 1, 16x16x16."""
    from torch.utils.flop_counter import FlopCounterMode

    from wd_stpt import STPT, STPTCondition, get_config

    config = get_config("base")
    model = STPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    tokens = torch.randint(0, config.codebook_size, (1, NUM_FRAMES, TOKENS, TOKENS))
    cond = STPTCondition(text=torch.randn(1, 32, config.text_dim), text_mask=torch.ones(1, 32, dtype=torch.bool))

    def step() -> None:
        logits = model(tokens, cond)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), tokens.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step()  # also the warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps, counter.get_total_flops()


def main() -> None:
    # More workers than cores is part of what is measured; torch's advice against it is noise here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24, help="clips read per worker setting")
    parser.add_argument("--steps", type=int, default=1, help="timed STPT steps (after one warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        video, manifest = Path(folder) / "720p.mp4", Path(folder) / "manifest.jsonl"
        write_720p_video(video)
        info = probe_video(video)
        manifest.write_text("".join(json.dumps({"path": video.name, "caption": ""}) + "\n" for _ in range(args.clips)))
        print(
            f"source: {info.width}x{info.height} {info.fps:g} fps {info.duration:.1f} s H.264 (one GOP), "
            f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
        )
        sequential = sequential_throughput(video)
        decoded = {workers: decode_throughput(manifest, workers) for workers in WORKERS}
    step_seconds, flop = stpt_step(args.steps)
    needed = NUM_FRAMES / step_seconds
    print(
        f"\nbase STPT, batch 1, 16x16x16 tokens: {step_seconds:.2f} s/step on this CPU, "
        f"{flop / 1e12:.2f} TFLOP/step -> needs {needed:.1f} frames/s per sample of batch"
    )
    print("\n| DataLoader workers | frames/s | clips/s | first batch (s) | x needed by base on this CPU |")
    print("|---:|---:|---:|---:|---:|")
    for workers, (frames_per_second, first) in decoded.items():
        print(
            f"| {workers} | {frames_per_second:.1f} | {frames_per_second / NUM_FRAMES:.2f} | {first:.2f} "
            f"| {frames_per_second / needed:.2f} |"
        )
    print(f"\nsequential decode + resize + crop of every frame, one process: {sequential:.1f} frames/s")
    print("\nOn a GPU the step is FLOP-bound: frames/s needed per sample of batch at a sustained rate of")
    for tflops in (100, 400):
        gpu_step = flop / (tflops * 1e12)
        print(f"  {tflops} TFLOP/s: {gpu_step * 1e3:.1f} ms/step -> {NUM_FRAMES / gpu_step:.0f} frames/s")


if __name__ == "__main__":
    main()
