"""fp32 against bf16 on this CPU: training-step tokens/s of the quickstart's STPT and tokenizer and of `base`.

`auto` precision (wd train, wd generate, the quickstart) picks bf16 on a CPU whose bf16 matmul the probe
`wd_cli.devices.cpu_bf16_speedup` measures at least 2x faster than fp32 (AMX, AVX512-BF16); this shows what that
buys for whole training steps. "fp32" is the path every CPU took before (autocast off, SDPA attention);
"bf16" is bf16 autocast (what wd trains with), where the STPT's attention runs as two matmuls (SDPA's fused CPU
kernel is slower in bf16). "bf16 weights" (STPT only) keeps the weights and activations in bf16 throughout, with
fp32 master copies in the optimizer, which saves autocast's casts around its fp32 ops; wd does not train this way
(docs/benchmarks.md). Steps alternate between the precisions in rounds and each keeps its best, so load from other
jobs falls on all of them.

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
from wd_cli.quickstart import STPT_MODEL, TOKENIZER, TOKENIZER_OVERRIDES

# A model's training step at each precision it is measured in ("fp32", "bf16", "bf16 weights").
Steps = dict[str, Callable[[], None]]
PRECISIONS = ("fp32", "bf16", "bf16 weights")


def stpt_step(width: int, depth: int, heads: int, stride: int, batch: int, frames: int, side: int,
              codebook_size: int) -> Steps:
    """A training step (forward, loss, backward, AdamW) of an STPT on random tokens at each precision."""
    torch.manual_seed(0)
    config = get_config("tiny", width=width, depth=depth, num_heads=heads, patch_stride=stride,
                        codebook_size=codebook_size, text_dim=64, action_dim=2, position_frames=frames,
                        position_height=side, position_width=side)
    tokens = torch.randint(0, codebook_size, (batch, frames, side, side))
    cond = STPTCondition(text=torch.randn(batch, 12, 64), text_mask=torch.ones(batch, 12, dtype=torch.bool))

    def autocast_step(bf16: bool) -> Callable[[], None]:
        model = STPT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(tokens, cond)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, codebook_size), tokens.reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return step

    def bf16_weights_step() -> Callable[[], None]:
        model = STPT(config)
        master = [parameter.detach().clone() for parameter in model.parameters()]
        weights = list(model.to(torch.bfloat16).parameters())
        optimizer = torch.optim.AdamW(master, lr=1e-4)
        bf16_cond = STPTCondition(text=cond.text.bfloat16(), text_mask=cond.text_mask)

        def step() -> None:
            logits = model(tokens, bf16_cond)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, codebook_size), tokens.reshape(-1))
            loss.backward()
            for fp32, bf16 in zip(master, weights):  # unused parts (the action MLP here) have no gradient
                fp32.grad = None if bf16.grad is None else bf16.grad.float()
                bf16.grad = None
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                torch._foreach_copy_(weights, master)

        return step

    return {"fp32": autocast_step(False), "bf16": autocast_step(True), "bf16 weights": bf16_weights_step()}


def tokenizer_step(preset: str, batch: int, side: int, **overrides: object) -> Steps:
    """A training step of a small VQGAN preset (reconstruction + perceptual-free loss, AdamW), fp32 and bf16."""
    torch.manual_seed(0)
    model = VQGAN(tokenizer_config(preset, **overrides))
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

    return {"fp32": lambda: step(False), "bf16": lambda: step(True)}


def best_seconds(steps: dict[str, Steps], rounds: int) -> dict[tuple[str, str], float]:
    """Each (model, precision) step's best time over `rounds` rounds that run every one in turn."""
    cases = [(name, precision) for name, by_precision in steps.items() for precision in by_precision]
    for name, precision in cases:  # warm-up: allocator, kernels, autocast's weight cache
        steps[name][precision]()
    best = {case: float("inf") for case in cases}
    for _ in range(rounds):
        for name, precision in cases:
            start = time.perf_counter()
            steps[name][precision]()
            best[name, precision] = min(best[name, precision], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny shapes and one round: check the script runs.")
    args = parser.parse_args()
    # name -> (steps, tokens or frames per step, unit)
    if args.quick:
        cases = {"quickstart STPT": (stpt_step(32, 1, 2, 1, 2, 4, 4, 64), 2 * 4 * 4 * 4, "tokens"),
                 "quickstart tokenizer": (tokenizer_step(TOKENIZER, 2, 16, **TOKENIZER_OVERRIDES), 2, "frames")}
    else:
        codes = tokenizer_config(TOKENIZER, **TOKENIZER_OVERRIDES).codebook_size  # the quickstart's codebook
        width, depth, heads, stride = (STPT_MODEL[key] for key in ("width", "depth", "num_heads", "patch_stride"))
        cases = {
            f"quickstart STPT (w{width}, d{depth}, patch stride {stride}, {codes} codes, batch 8 x 8 x 8 x 8)":
                (stpt_step(width, depth, heads, stride, 8, 8, 8, codes), 8 * 8 * 8 * 8, "tokens"),
            "the same, one window per clip (patch stride 1)":
                (stpt_step(width, depth, heads, 1, 8, 8, 8, codes), 8 * 8 * 8 * 8, "tokens"),
            "base (w512, d8, 8,192 codes, batch 2 x 8 x 16 x 16)":
                (stpt_step(512, 8, 8, 2, 2, 8, 16, 8192), 2 * 8 * 16 * 16, "tokens"),
            f"quickstart tokenizer ({TOKENIZER}, {codes} codes, 8 frames 32 x 32)":
                (tokenizer_step(TOKENIZER, 8, 32, **TOKENIZER_OVERRIDES), 8, "frames"),
            "f4-small tokenizer (before)": (tokenizer_step("f4-small", 8, 32), 8, "frames"),
        }
    best = best_seconds({name: steps for name, (steps, _, _) in cases.items()}, rounds=1 if args.quick else 5)
    print(f"threads: {torch.get_num_threads()}; bf16 matmul / fp32 matmul (the probe): "
          f"{cpu_bf16_speedup():.2f}x\n")
    print("| model | fp32 per s | bf16 per s | bf16 weights per s | bf16 / fp32 | bf16 weights / bf16 |")
    print("|---|---|---|---|---|---|")
    for name, (_, amount, unit) in cases.items():
        rate = {precision: amount / best[name, precision] for precision in PRECISIONS if (name, precision) in best}
        fp32, bf16, weights = rate["fp32"], rate["bf16"], rate.get("bf16 weights")
        weights_cells = ("-", "-") if weights is None else (f"{weights:.0f} {unit}", f"{weights / bf16:.2f}x")
        print(f"| {name} | {fp32:.0f} {unit} | {bf16:.0f} {unit} | {weights_cells[0]} | {bf16 / fp32:.2f}x | "
              f"{weights_cells[1]} |")


if __name__ == "__main__":
    main()
