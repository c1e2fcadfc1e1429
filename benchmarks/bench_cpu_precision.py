"""fp32 against bf16 on this CPU: training-step tokens/s of the quickstart's STPT and tokenizer and of `base`.

`auto` precision (wd train, wd generate, the quickstart) picks bf16 on a CPU whose bf16 matmul the probe
`wd_cli.devices.cpu_bf16_speedup` measures at least 2x faster than fp32 (AMX, AVX512-BF16); this shows what that
buys for whole training steps. "fp32" is the path every CPU took before (autocast off, SDPA attention);
"bf16" is bf16 autocast, where the STPT's attention runs as two matmuls (SDPA's fused CPU kernel is slower in
bf16). Steps alternate between the two in rounds and each keeps its best, so load from other jobs falls on both.

Run (nothing else on the machine): uv run python benchmarks/bench_cpu_precision.py  [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from wd_stpt import STPT, STPTCondition, get_config
from wd_tokenizer import VQGAN, LossConfig
from wd_tokenizer import get_config as tokenizer_config
from wd_tokenizer.losses import VQGANLoss

from wd_cli.devices import cpu_bf16_speedup

Step = Callable[[bool], None]


def stpt_step(width: int, depth: int, heads: int, stride: int, batch: int, frames: int, side: int) -> Step:
    """A training step (forward, loss, backward, AdamW) of an STPT on random tokens; bf16 autocast when asked."""
    torch.manual_seed(0)
    config = get_config("tiny", width=width, depth=depth, num_heads=heads, patch_stride=stride, codebook_size=1000,
                        text_dim=64, action_dim=2, position_frames=frames, position_height=side, position_width=side)
    model = STPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 1000, (batch, frames, side, side))
    cond = STPTCondition(text=torch.randn(batch, 12, 64), text_mask=torch.ones(batch, 12, dtype=torch.bool))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens, cond)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 1000), tokens.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def tokenizer_step(preset: str, batch: int, side: int) -> Step:
    """A training step of a small VQGAN preset (reconstruction + perceptual-free loss, AdamW)."""
    torch.manual_seed(0)
    model = VQGAN(tokenizer_config(preset))
    loss_fn = VQGANLoss(LossConfig(disc_start=10**9))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    pixels = torch.rand(batch, 3, side, side)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model(pixels)
            loss, _ = loss_fn.generator_loss(pixels, output, model.decoder.conv_out.weight, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def best_seconds(steps: dict[str, Step], rounds: int) -> dict[str, float]:
    """Each (name, precision) step's best time over `rounds` rounds that run every one in turn."""
    cases = [(name, bf16) for name in steps for bf16 in (False, True)]
    for name, bf16 in cases:  # warm-up: allocator, kernels, autocast's weight cache
        steps[name](bf16)
    best = {case: float("inf") for case in cases}
    for _ in range(rounds):
        for name, bf16 in cases:
            start = time.perf_counter()
            steps[name](bf16)
            best[name, bf16] = min(best[name, bf16], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny shapes and one round: check the script runs.")
    args = parser.parse_args()
    # name -> (step, tokens or frames per step, unit)
    if args.quick:
        cases = {"quickstart STPT": (stpt_step(32, 1, 2, 1, 2, 4, 4), 2 * 4 * 4 * 4, "tokens"),
                 "quickstart tokenizer": (tokenizer_step("f4-patch", 2, 16), 2, "frames")}
    else:
        cases = {
            "quickstart STPT (w128, d4, patch stride 2, batch 8 x 8 x 8 x 8)": (stpt_step(128, 4, 4, 2, 8, 8, 8),
                                                                                 8 * 8 * 8 * 8, "tokens"),
            "the same, one window per clip (patch stride 1)": (stpt_step(128, 4, 4, 1, 8, 8, 8), 8 * 8 * 8 * 8,
                                                               "tokens"),
            "base (w512, d8, batch 2 x 8 x 16 x 16)": (stpt_step(512, 8, 8, 2, 2, 8, 16), 2 * 8 * 16 * 16, "tokens"),
            "quickstart tokenizer (f4-patch, 8 frames 32 x 32)": (tokenizer_step("f4-patch", 8, 32), 8, "frames"),
            "f4-small tokenizer (before)": (tokenizer_step("f4-small", 8, 32), 8, "frames"),
        }
    best = best_seconds({name: step for name, (step, _, _) in cases.items()}, rounds=1 if args.quick else 5)
    print(f"threads: {torch.get_num_threads()}; bf16 matmul / fp32 matmul (the probe): "
          f"{cpu_bf16_speedup():.2f}x\n")
    print("| model | fp32 per s | bf16 per s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for name, (_, amount, unit) in cases.items():
        fp32, bf16 = amount / best[name, False], amount / best[name, True]
        print(f"| {name} | {fp32:.0f} {unit} | {bf16:.0f} {unit} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
