"""Full STPT training steps of `wd train` (data draw, masking, forward, backward, clipping, AdamW) against the
bare model step and an fp32 matmul measured in the same run; on CUDA, paper-1b in bf16.

Run from the repo root:  uv run python benchmarks/bench_train.py   (CPU part: about 2 minutes on 2 cores)
FLOPs are counted with bench_stpt.py's FlopCounterMode rules over one whole training step; MFU = achieved
FLOP/s over the matmul FLOP/s measured right before each timed step (fp32 2048^3 on CPU, bf16 8192^3 on CUDA).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from bench_stpt import MatmulReference, count_flops, stpt_inputs, table, train_step
from wd_data import write_token_cache
from wd_stpt import get_config

from wd_cli.train import (
    CheckpointSection,
    DataSection,
    ModelSection,
    OptimSection,
    ParallelSection,
    SourceConfig,
    STPTRunConfig,
    TrainSection,
)
from wd_cli.train.parallel import init_distributed
from wd_cli.train.trainer import STPTTrainer

TEXT_TOKENS = 16
GIB = 1024**3


def token_cache(directory: Path, shape: tuple[int, int, int], codebook: int, text_dim: int, count: int = 8) -> Path:
    """`count` samples of random tokens `shape` (N, h, w) with TEXT_TOKENS random text embeddings each."""
    generator = torch.Generator().manual_seed(0)
    samples = [{"frames": torch.zeros(1, 1, 1, 3, dtype=torch.uint8), "caption": "", "actions": None,
                "is_image": False, "meta": {}} for _ in range(count)]
    return write_token_cache(samples, lambda _: torch.randint(0, codebook, shape, generator=generator), directory,
                             encode_text=lambda _: torch.randn(TEXT_TOKENS, text_dim, generator=generator),
                             metadata={"codebook_size": codebook}, progress=False)


def trainer(cache: Path, run_dir: Path, preset: str, batch_size: int, checkpointing: bool = False,
            compile_blocks: bool = False) -> STPTTrainer:
    config = STPTRunConfig(
        data=DataSection([SourceConfig("token_cache", str(cache))], batch_size=batch_size),
        model=ModelSection(preset=preset), optim=OptimSection(warmup_steps=1), train=TrainSection(steps=10**6),
        checkpoint=CheckpointSection(every=10**6),
        parallel=ParallelSection(activation_checkpointing=checkpointing, compile=compile_blocks))
    run = STPTTrainer(config, run_dir, init_distributed(config.train))
    run.model.train()
    return run


def cpu_rows(repeats: int, reference: MatmulReference) -> list[tuple]:
    """(what, tokens/s, GFLOP/token, MFU alongside) for tiny and base: `wd train` step vs the bare model step."""
    shape, batch = (16, 8, 16), 2  # 2 x 2,048 tokens, bench_stpt's shape
    tokens_per_step = batch * shape[0] * shape[1] * shape[2]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for preset in ("tiny", "base"):
            config = get_config(preset)
            cache = token_cache(Path(root) / preset, shape, config.codebook_size, config.text_dim)
            run = trainer(cache, Path(root) / f"run-{preset}", preset, batch)
            bare_tokens, cond, targets = stpt_inputs(config.text_dim)
            model = run.model
            steps = {f"{preset}: wd train step": run.train_step,
                     f"{preset}: bare forward+backward": partial(train_step, model, partial(model, bare_tokens, cond),
                                                                 targets)}
            for name, step in steps.items():
                flops = count_flops(step)  # also the warm-up
                best = (float("inf"), 1.0)
                for _ in range(repeats):
                    matmul = reference.sample()
                    start = time.perf_counter()
                    step()
                    best = min(best, (time.perf_counter() - start, matmul))
                seconds, matmul = best
                rows.append((name, tokens_per_step / seconds, flops / tokens_per_step / 1e9, flops / seconds / matmul))
    return rows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(step: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, int, int | None]:
    """(fastest seconds, FLOPs, peak allocated bytes or None off CUDA) of a training step: one warm-up (and
    compilation), one step under the FLOP counter, then `repeats` timed steps."""
    step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = count_flops(step)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, flops, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def bf16_matmul_flops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * 8192**3 / best


def gpu_rows(batch: int, repeats: int, compile_blocks: bool) -> list[tuple]:
    """paper-1b at 16 x 16 x 16 tokens, bf16 autocast: (activation checkpointing, batch, tokens/s, MFU, peak GiB,
    largest batch in 80 GB from the peak's growth between batch 1 and `batch`)."""
    config = get_config("paper-1b")
    shape = (16, 16, 16)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        cache = token_cache(Path(root) / "cache", shape, config.codebook_size, config.text_dim, count=2 * batch)
        for checkpointing in (False, True):
            peaks = {}
            for size in (1, batch):
                run = trainer(cache, Path(root) / "run", "paper-1b", size, checkpointing, compile_blocks)
                best, flops, peaks[size] = measure_step(run.train_step, run.env.device, repeats)
                matmul = bf16_matmul_flops()
                tokens = size * shape[0] * shape[1] * shape[2]
                rows.append(("on" if checkpointing else "off", size, tokens / best, flops / best / matmul,
                             peaks[size] / GIB))
                del run
                torch.cuda.empty_cache()
            per_sample = (peaks[batch] - peaks[1]) / max(1, batch - 1)
            largest = int((80 * 1e9 - (peaks[1] - per_sample)) // per_sample) if per_sample > 0 else 0
            rows[-1] = (*rows[-1], largest)
            rows[-2] = (*rows[-2], "")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per row (the fastest is kept)")
    parser.add_argument("--gpu-batch", type=int, default=8, help="paper-1b batch for the GPU rows")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block in the GPU rows")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    torch.manual_seed(0)
    reference = MatmulReference()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU rows: batch 2 x 16x8x16 tokens, "
          f"float32\n")
    rows = cpu_rows(args.repeats, reference)
    print(table(("step", "tokens/s", "GFLOP/token", "MFU (/ fp32 matmul alongside)"), rows))
    speed = {name: tokens for name, tokens, *_ in rows}
    for preset in ("tiny", "base"):
        ratio = speed[f"{preset}: wd train step"] / speed[f"{preset}: bare forward+backward"]
        print(f"{preset}: wd train step / bare forward+backward tokens/s = {ratio:.2f}")
    print(f"fp32 matmul 2048^3: best in run {reference.best / 1e9:.1f} GFLOP/s")
    if torch.cuda.is_available():
        print(f"\n{torch.cuda.get_device_name()}: paper-1b, 16x16x16 tokens, bf16 autocast\n")
        print(table(("activation checkpointing", "batch", "tokens/s", "MFU (/ bf16 matmul)", "peak GiB",
                     "largest batch in 80 GB"), gpu_rows(args.gpu_batch, args.repeats, args.compile)))
    else:
        print("no CUDA device: the paper-1b GPU section is skipped")


if __name__ == "__main__":
    main()
