"""Is the quickstart budget-bound? Its STPT recipe trained past its minutes, each checkpoint evaluated.

The quickstart trains its STPT for what its deadline leaves (~2,500 steps on the 2-core machine). This trains the
same recipe (`wd_cli.quickstart.stpt_run_config`: model, masks, source weights, optimizer; bf16 where the CPU
prefers it) on a finished quickstart's tokenizer and token caches for `--steps` steps, learning rate decayed over
all of them, keeps a checkpoint every `--every` steps, and evaluates each as the quickstart does (its held-out
clips and sampling). The checkpoints before the last are not annealed, so they understate what a run of that length
would reach. `--batch` and `--lr` try other micro-batches and learning rates at the same recipe otherwise, and
`--set` any other field of the run's config as `wd train stpt` overrides it (`--set optim.ema_decay=0.999`,
`--set model.overrides.width=256`, `--set loss.mask_shared=0.5`, `--set data.sources.0.weight=2`); `--minutes`
trains to a time budget as the quickstart does (learning rate annealed by whichever of steps and time runs out
first), to compare recipes at equal time.

Run (nothing else on the machine; ~26 min of training at the defaults, ~1 min per evaluation):
    uv run wd quickstart --out wd-quickstart          # once, for its tokenizer and caches
    uv run python benchmarks/bench_quickstart_steps.py wd-quickstart --out /tmp/steps
Check that it runs: --quick (40 steps, 2 clips per task).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import wd_cli.main  # noqa: F401  (the wd command's thread policy, set before torch loads)
from wd_cli.evaluation import EvalConfig, evaluate_pipeline
from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.quickstart import CONTEXT_FRAMES, SAMPLING, QuickstartConfig, stpt_run_config
from wd_cli.text_encoders import HashTextEncoder
from wd_cli.train import train_stpt
from wd_cli.train.config import STPTRunConfig
from wd_cli.train.configfile import apply_overrides, from_dict, to_plain
from wd_cli.train.export import checked_weights
from wd_tokenizer import VQGAN
from wd_tokenizer.checkpoints import checkpoint_dirs, checkpoint_step

TASKS = ["image2video", "inpaint", "text2video", "stylize", "action2video"]
# Table columns: (heading, start of the metric's name).
COLUMNS = [("i2v dB", "image2video PSNR"), ("i2v px", "image2video position"), ("i2v IoU", "image2video shape"),
           ("inpaint IoU", "inpaint shape"), ("t2v colour+shape", "text2video dominant colour and"),
           ("stylize", "stylize"), ("turns", "action2video turns")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart", type=Path, help="a finished quickstart's --out (tokenizer/, caches/, pipeline/)")
    parser.add_argument("--out", type=Path, required=True, help="the training run's directory (resumed if there)")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=2_500)
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default: the quickstart's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the quickstart's)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="train to this time budget instead (as the quickstart does; --steps is then a cap)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a field of the run's config, as `wd train stpt` does (repeatable)")
    parser.add_argument("--clips", type=int, default=32, help="held-out clips per task")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, every, clips = (40, 20, 2) if args.quick else (args.steps, args.every, args.clips)

    # The text encoder the caches' captions were embedded with (the quickstart's seed picks its word vectors, and
    # an encoder of another seed turns every prompt into noise); the training seed is the quickstart's too.
    text_encoder = HashTextEncoder.from_pretrained(args.quickstart / "pipeline" / "text_encoder")
    config = QuickstartConfig(out_dir=args.quickstart, seed=text_encoder.seed)
    caches = [args.quickstart / "caches" / "shapes", args.quickstart / "caches" / "drive"]
    run = stpt_run_config(config, caches, minutes=1.0)
    run.train = dataclasses.replace(run.train, steps=steps, time_budget_minutes=args.minutes)
    run.checkpoint = dataclasses.replace(run.checkpoint, every=every, keep=steps // every + 1)
    if args.batch is not None:
        run.data = dataclasses.replace(run.data, batch_size=args.batch)
    if args.lr is not None:
        run.optim = dataclasses.replace(run.optim, lr=args.lr)
    run = from_dict(STPTRunConfig, apply_overrides(to_plain(run), args.overrides))
    start = time.monotonic()
    train_stpt(run, args.out, progress=not args.quick)
    trained = checkpoint_step(checkpoint_dirs(args.out)[-1])
    print(f"trained {trained} steps of batch {run.data.batch_size} in {(time.monotonic() - start) / 60:.1f} min")

    tokenizer = VQGAN.from_pretrained(args.quickstart / "tokenizer").eval()
    defaults = PipelineDefaults(**SAMPLING, num_frames=config.num_frames, height=config.size, width=config.size,
                                fps=config.shapes.fps, context_frames=CONTEXT_FRAMES)
    print("| steps | " + " | ".join(heading for heading, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for checkpoint in checkpoint_dirs(args.out):
        pipeline = WorldDreamerPipeline(tokenizer, checked_weights(checkpoint).eval(), text_encoder, defaults)
        metrics = evaluate_pipeline(pipeline, EvalConfig(config.shapes, config.drive, clips=clips), tasks=TASKS,
                                    progress=False)
        values = [next((f"{m.value:.2f}" for m in metrics if m.name.startswith(prefix)), "-")
                  for _, prefix in COLUMNS]
        print(f"| {checkpoint_step(checkpoint):,} | " + " | ".join(values) + " |", flush=True)


if __name__ == "__main__":
    main()
