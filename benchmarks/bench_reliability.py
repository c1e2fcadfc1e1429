"""What the reliability checks cost: SHA-256 manifests on checkpoint saves and resumes, pipeline checksums at load,
the non-finite guard of a training step.

    uv run python benchmarks/bench_reliability.py [--preset base] [--repeats 3] [--quick]

For one STPT preset (with AdamW state, as a training checkpoint holds it): a checkpoint save, the part of it that
hashes the files for `manifest.json`, a full resume read (`read_checkpoint`: manifest check, tensors, finite
weights) and the manifest check alone; a pipeline load (`from_pretrained`) and its checksum checks alone; a
training step's finiteness check of the loss and gradient norm against the step. Prints seconds and the share of
each check in its operation, all measured in the same run (the median of `--repeats`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from wd_stpt import STPT
from wd_stpt import get_config as stpt_config
from wd_tokenizer import VQGAN
from wd_tokenizer import get_config as tokenizer_config
from wd_tokenizer.checkpoints import checkpoint_dirs, verify_checkpoint
from wd_tokenizer.io import directory_digests
from wd_tokenizer.nonfinite import all_finite

from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.pipeline_file import read_pipeline_file
from wd_cli.text_encoders import HashTextEncoder
from wd_cli.train.checkpoint import read_checkpoint, save_checkpoint
from wd_cli.train.parallel import DistributedEnv


def seconds(work: Callable[[], object], repeats: int) -> float:
    """The median wall time of `work()` over `repeats` calls, after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base", help="STPT preset (tiny, small, base, paper-1b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the tiny preset, one repeat: checks that it runs")
    args = parser.parse_args()
    preset, repeats = ("tiny", 1) if args.quick else (args.preset, args.repeats)
    torch.manual_seed(0)
    model = STPT(stpt_config(preset, codebook_size=1000, text_dim=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    loss = model(tokens).float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    env = DistributedEnv(0, 1, torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as root:
        run = Path(root) / "run"
        step = iter(range(1, 10**6))
        save = seconds(lambda: save_checkpoint(run, next(step), model, model.config, optimizer, scheduler, None,
                                               {}, 2, env), repeats)
        newest = checkpoint_dirs(run)[-1]
        size = sum(path.stat().st_size for path in newest.rglob("*") if path.is_file())
        digests = seconds(lambda: directory_digests(newest, exclude=("manifest.json",)), repeats)
        rows.append(("checkpoint save", save, "SHA-256 manifest", digests))
        rows.append(("checkpoint resume read", seconds(lambda: read_checkpoint(newest, False), repeats),
                     "manifest check", seconds(lambda: verify_checkpoint(newest), repeats)))
        tokenizer = VQGAN(tokenizer_config("f8-small"))
        pipeline = WorldDreamerPipeline(tokenizer, STPT(stpt_config(preset, codebook_size=tokenizer.codebook_size,
                                                                    text_dim=64)),
                                        HashTextEncoder(dim=64), PipelineDefaults(height=64, width=64))
        pipeline.save_pretrained(Path(root) / "pipeline")
        rows.append(("pipeline load", seconds(lambda: WorldDreamerPipeline.from_pretrained(Path(root) / "pipeline",
                                                                                          device="cpu"), repeats),
                     "pipeline.json checks", seconds(lambda: read_pipeline_file(Path(root) / "pipeline",
                                                                                PipelineDefaults.from_dict),
                                                     repeats)))

    def train_step() -> None:
        optimizer.zero_grad()
        model(tokens).float().logsumexp(-1).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    rows.append(("training step (2x4x4 tokens)", seconds(train_step, repeats), "finite loss and grad norm",
                 seconds(lambda: all_finite(float(loss.detach()), float(grad_norm)), repeats)))
    print(f"STPT preset {preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, checkpoint "
          f"{size / 1e6:.1f} MB")
    print(f"| {'operation':<30} | {'seconds':>9} | {'check':<26} | {'seconds':>9} | {'share':>6} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 28}|{'-' * 11}|{'-' * 8}|")
    for operation, total, check, part in rows:
        print(f"| {operation:<30} | {total:>9.4f} | {check:<26} | {part:>9.4f} | {part / total:>6.1%} |")


if __name__ == "__main__":
    main()
