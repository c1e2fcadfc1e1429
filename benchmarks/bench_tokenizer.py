"""wd-tokenizer benchmark: open-muse-f16-8192 encode/decode speed at 256x256, and the reconstruction quality of
the small preset trained briefly on synthetic shapes clips (held-out seeds), beside two other quantizers and
trivial baselines measured in the same run.

    uv run python benchmarks/bench_tokenizer.py            # ~4-5 minutes on a busy 2-core CPU
    uv run python benchmarks/bench_tokenizer.py --train-steps 600   # the longer run in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
import torch
from wd_data.synthetic import ShapesConfig, ShapesWorld
from wd_tokenizer import VQGAN, LossConfig, TrainConfig, evaluate, frame_batches, get_config, train_vqgan
from wd_tokenizer.metrics import psnr, ssim


def speed(device: torch.device, frames: int, height: int, width: int, dtype: torch.dtype = torch.float32,
          preset: str = "open-muse-f16-8192") -> tuple[float, float]:
    """Frames/s of encode and decode of `frames` frames per call, under `dtype` autocast unless float32 (random
    weights: speed does not depend on them)."""
    torch.manual_seed(0)
    model = VQGAN(get_config(preset)).to(device).eval()
    pixels = torch.rand(frames, 3, height, width, device=device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        ids = model.encode(pixels)
        model.decode(ids)  # warm-up at the timed shape: allocator, kernel selection
        rates = []
        for fn, arg in ((model.encode, pixels), (model.decode, ids)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(arg)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(frames / (time.perf_counter() - start))
    return rates[0], rates[1]


def shapes_frames(seeds: range, size: int, num_frames: int) -> torch.Tensor:
    """Uint8 (len(seeds) * num_frames, size, size, 3) from wd_data's synthetic shapes world."""
    world = ShapesWorld(ShapesConfig(height=size, width=size, num_frames=num_frames))
    return torch.from_numpy(np.concatenate([world.render(seed=s).frames for s in seeds]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="f8-small")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="shapes clip height and width")
    parser.add_argument("--speed-frames", type=int, default=2, help="frames per timed encode/decode call on CPU")
    parser.add_argument("--threads", type=int, default=1, help="more threads stall on a busy shared CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("## Speed: open-muse-f16-8192 (146M parameters, random weights), 256x256 frames")
    print("| device | frames/call | encode frames/s | decode frames/s | decode time / encode time |")
    print("|---|---|---|---|---|")
    devices = [(torch.device("cpu"), args.speed_frames)]
    if torch.cuda.is_available():
        devices.append((torch.device("cuda"), 16))
    for device, frames in devices:
        encode_fps, decode_fps = speed(device, frames, 256, 256)
        print(f"| {device.type} | {frames} | {encode_fps:.3f} | {decode_fps:.3f} | {encode_fps / decode_fps:.2f} |")
    if not torch.cuda.is_available():
        print("(no CUDA device in this run)")

    train = shapes_frames(range(0, 64), args.size, 16)
    held_out = shapes_frames(range(10_000, 10_016), args.size, 16)
    held_out_pixels = held_out.permute(0, 3, 1, 2).float() / 255.0
    eval_batches = list(held_out_pixels.split(64))
    recipe = get_config(args.preset)
    variants = {
        f"{args.preset} (FSQ 8x5x5x5, the preset)": recipe,
        "same, VectorQuantize 1024 (cosine, dim 8, k-means, dead-code 2)": dataclasses.replace(
            recipe, quantizer="vq", num_embeddings=1024, codebook_dim=8, use_cosine_sim=True, kmeans_init=True,
            threshold_ema_dead_code=2.0, ema_decay=0.95,
        ),
        "same, plain L2 codebook 1024": dataclasses.replace(recipe, quantizer="l2", num_embeddings=1024),
    }
    config = TrainConfig(steps=args.train_steps, lr=2e-3, log_every=100, checkpoint_every=10**9,
                         loss=LossConfig(disc_start=10**9))
    print(f"\n## Reconstruction: {len(train)} training frames (seeds 0-63), {len(held_out)} held-out frames "
          f"(seeds 10000-10015), {args.size}x{args.size}, {args.train_steps} steps of batch {args.batch_size}")
    print("| model | train s | PSNR dB | SSIM | codebook usage | perplexity |")
    print("|---|---|---|---|---|---|")
    mean_frame = held_out_pixels.mean(dim=(0, 2, 3), keepdim=True).expand_as(held_out_pixels)
    print(f"| mean colour of the held-out set | - | {psnr(mean_frame, held_out_pixels):.2f} | "
          f"{ssim(mean_frame, held_out_pixels):.3f} | - | - |")
    torch.manual_seed(0)
    untrained = evaluate(VQGAN(recipe), eval_batches)
    print(f"| {args.preset} untrained | - | {untrained.psnr:.2f} | {untrained.ssim:.3f} | "
          f"{untrained.codebook_usage:.3f} | {untrained.perplexity:.1f} |")
    for name, model_config in variants.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            model = train_vqgan(VQGAN(model_config), frame_batches(train, args.batch_size), config, run_dir,
                                progress=False)
        seconds = time.perf_counter() - start
        report = evaluate(model, eval_batches)
        print(f"| {name} | {seconds:.0f} | {report.psnr:.2f} | {report.ssim:.3f} | "
              f"{report.codebook_usage:.3f} | {report.perplexity:.1f} |")


if __name__ == "__main__":
    main()
