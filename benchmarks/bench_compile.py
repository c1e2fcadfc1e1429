"""torch.compile (inductor) against eager for the STPT on this machine's CPU: tokens/s forward and forward+backward.

Run from the repo root:  uv run python benchmarks/bench_compile.py            (compiles take minutes on 2 cores)
                         uv run python benchmarks/bench_compile.py --quick    (tiny sizes: checks that it runs)
Shapes: the quickstart's STPT (tiny preset at width 128, depth 4, 4 heads; batch 8 x 8 frames x 8x8 tokens) and
`base` (batch 2 x 8 x 16x16, bench_stpt.py's shape). Compiled variants: the whole model, and each block alone (what
`wd train` does with parallel.compile). Steps of every variant alternate round by round and each keeps its best
round, so load from other jobs falls on all alike; ratios are taken within the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from bench_stpt import table, train_step
from torch import nn
from wd_stpt import STPT, STPTConfig, STPTCondition, get_config

from wd_cli.quickstart import STPT_MODEL, QuickstartConfig

MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Case:
    name: str
    config: STPTConfig
    shape: tuple[int, int, int, int]  # batch, frames, height, width in tokens

    @property
    def tokens(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]


def cases(quick: bool) -> list[Case]:
    quickstart = get_config("tiny", **STPT_MODEL, codebook_size=1000, text_dim=QuickstartConfig.text_dim)
    if quick:
        small = {"width": 32, "depth": 2, "num_heads": 2}
        return [Case("quickstart (quick)", get_config("tiny", **(STPT_MODEL | small), codebook_size=64), (2, 2, 4, 4))]
    return [Case("quickstart", quickstart, (8, 8, 8, 8)), Case("base", get_config("base"), (2, 8, 16, 16))]


def inputs(case: Case) -> tuple[torch.Tensor, STPTCondition, torch.Tensor]:
    """Random tokens (the [MASK] id included), a 16-token text prompt, and targets."""
    generator = torch.Generator().manual_seed(0)
    codebook, batch = case.config.codebook_size, case.shape[0]
    tokens = torch.randint(0, codebook + 1, case.shape, generator=generator)
    text = torch.randn(batch, 16, case.config.text_dim, generator=generator)
    return tokens, STPTCondition(text=text), torch.randint(0, codebook, case.shape, generator=generator)


def variants(config: STPTConfig) -> dict[str, nn.Module]:
    """The same weights three ways: eager, the whole model compiled, each block compiled."""
    torch.manual_seed(0)
    eager = STPT(config)
    torch.manual_seed(0)
    per_block = STPT(config)
    for block in per_block.blocks:
        block.compile()
    return {"eager": eager, "compiled model": torch.compile(eager), "compiled blocks": per_block}


def run_step(model: nn.Module, mode: str, step: Callable[[], object]) -> None:
    model.train(mode == "forward+backward")
    with torch.set_grad_enabled(mode == "forward+backward"):
        step()


def measure(case: Case, repeats: int) -> list[tuple]:
    """(case, variant, mode, compile s, tokens/s, tokens/s over eager's) for every variant and mode."""
    tokens, cond, targets = inputs(case)
    steps = []
    for variant, model in variants(case.config).items():
        forward = partial(model, tokens, cond)
        for mode in MODES:
            step = forward if mode == "forward" else partial(train_step, model, forward, targets)
            start = time.perf_counter()
            run_step(model, mode, step)  # compiles (the first call of a compiled variant), or warms up
            steps.append((variant, mode, model, step, time.perf_counter() - start))
    best = [float("inf")] * len(steps)
    for _ in range(repeats):
        for index, (_, mode, model, step, _) in enumerate(steps):
            start = time.perf_counter()
            run_step(model, mode, step)
            best[index] = min(best[index], time.perf_counter() - start)
    eager = {mode: seconds for (variant, mode, *_), seconds in zip(steps, best) if variant == "eager"}
    return [(case.name, variant, mode, first if variant != "eager" else "-", case.tokens / seconds,
             eager[mode] / seconds) for (variant, mode, _, _, first), seconds in zip(steps, best)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the best is kept)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one round: checks that it runs")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, inductor on the CPU\n")
    rows = [row for case in cases(args.quick) for row in measure(case, 1 if args.quick else args.repeats)]
    print(table(("shape", "variant", "mode", "first call s (compile)", "tokens/s", "/ eager"), rows))


if __name__ == "__main__":
    main()
