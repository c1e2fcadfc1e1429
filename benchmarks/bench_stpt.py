"""STPT throughput on this machine, against a plain fp32 matmul and phenaki-pytorch's MaskGit transformer.

Run from the repo root:  uv run --group bench python benchmarks/bench_stpt.py
Every number in one table comes from the same run, so ratios hold even on a loaded machine.
FLOPs are counted by torch's FlopCounterMode (matmuls, convolutions, attention), with grouped-conv
backward fixed (PyTorch's formula ignores `groups`); training FLOPs are what forward+backward executes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from wd_stpt import STPT, STPTCondition, get_config
from wd_stpt.condition import PromptEmbedding
from wd_stpt.conv import CONVOLUTIONS
from wd_stpt.layers import STPTBlock, WindowSelfAttention

BATCH, FRAMES, HEIGHT, WIDTH = 2, 8, 16, 16  # 2 x 2,048 tokens, the dev-guide shape
TEXT_TOKENS = 16


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, _transposed,
                       _output_padding, _groups, output_mask, **kwargs) -> int:
    """Input and weight gradients each cost one forward convolution (groups-aware via w_shape)."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape) * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop}) as mode:
        fn()
    return mode.get_total_flops()


def best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Fastest of `repeats` timed calls after `warmup` untimed ones (the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class MatmulReference:
    """fp32 2048^3 matmul FLOP/s, sampled right before every timed model step since the load varies."""

    def __init__(self) -> None:
        self.a, self.b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        self.best = 0.0

    def sample(self) -> float:
        flops = 2 * 2048**3 / best_seconds(lambda: self.a @ self.b, repeats=3)
        self.best = max(self.best, flops)
        return flops


def train_step(model: nn.Module, forward: Callable[[], torch.Tensor], targets: torch.Tensor) -> None:
    logits = forward()
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
    model.zero_grad(set_to_none=True)


def stpt_inputs(text_dim: int, seed: int = 0) -> tuple[torch.Tensor, STPTCondition, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 8193, (BATCH, FRAMES, HEIGHT, WIDTH), generator=generator)
    text = torch.randn(BATCH, TEXT_TOKENS, text_dim, generator=generator)
    targets = torch.randint(0, 8192, (BATCH, FRAMES, HEIGHT, WIDTH), generator=generator)
    return tokens, STPTCondition(text=text, text_mask=torch.ones(BATCH, TEXT_TOKENS, dtype=torch.bool)), targets


def phenaki_model(width: int, depth: int, heads: int, text_dim: int) -> nn.Module | None:
    try:
        from phenaki_pytorch.phenaki_pytorch import MaskGit
    except ImportError:
        return None
    return MaskGit(dim=width, num_tokens=8192, max_seq_len=FRAMES * HEIGHT * WIDTH, depth=depth, heads=heads,
                   dim_head=width // heads, dim_context=text_dim)


def throughput_rows(reference: MatmulReference, repeats: int) -> list[tuple[str, str, float, float, float, float]]:
    """(model, mode, tokens/s, GFLOP per token, FLOP/s, matmul FLOP/s alongside) for tiny, base, phenaki.

    Steps of all models are interleaved round by round, each right after a matmul sample, and the best
    round is kept per model: a burst of load from other jobs then hits every model alike."""
    tokens_per_step = BATCH * FRAMES * HEIGHT * WIDTH
    base = get_config("base")
    forwards: list[tuple[str, nn.Module, Callable[[], torch.Tensor], torch.Tensor, tuple[str, ...]]] = []
    for name in ("tiny", "base"):
        torch.manual_seed(0)
        model = STPT(get_config(name))
        tokens, cond, targets = stpt_inputs(model.config.text_dim)
        forwards.append((f"wd-stpt {name}", model, partial(model, tokens, cond), targets,
                         ("forward", "forward+backward")))
    phenaki = phenaki_model(base.width, base.depth, base.num_heads, base.text_dim)
    if phenaki is not None:
        tokens, cond, targets = stpt_inputs(base.text_dim)
        forward = partial(phenaki, tokens, context=cond.text, text_mask=cond.text_mask)
        forwards.append(("phenaki-pytorch MaskGit", phenaki, forward, targets, ("forward+backward",)))
    steps = []  # (name, mode, model, step); the step runs with grad exactly when training
    for name, model, forward, targets, modes in forwards:
        for mode in modes:
            training = mode == "forward+backward"
            steps.append((name, mode, model, partial(train_step, model, forward, targets) if training else forward))

    def run(model: nn.Module, mode: str, step: Callable[[], object]) -> None:
        model.train(mode == "forward+backward")
        with torch.set_grad_enabled(mode == "forward+backward"):
            step()

    flops = [count_flops(partial(run, model, mode, step)) for _, mode, model, step in steps]  # also the warm-up
    best = [(float("inf"), 0.0)] * len(steps)
    for _ in range(repeats):
        for index, (_, mode, model, step) in enumerate(steps):
            matmul = reference.sample()
            start = time.perf_counter()
            run(model, mode, step)
            best[index] = min(best[index], (time.perf_counter() - start, matmul))
    return [(name, mode, tokens_per_step / seconds, count / tokens_per_step / 1e9, count / seconds, matmul)
            for (name, mode, _, _), count, (seconds, matmul) in zip(steps, flops, best)]


def fwd_bwd_seconds(module: nn.Module, forward: Callable[[], torch.Tensor], repeats: int) -> float:
    def step() -> None:
        forward().square().mean().backward()
        module.zero_grad(set_to_none=True)

    return best_seconds(step, repeats)


def module_cost(module: nn.Module, x: torch.Tensor, *args: object, repeats: int) -> tuple[float, float]:
    """(forward GFLOP per token, forward+backward ms) of module(x, *args); x (B, N, h, w, C)."""
    flops = count_flops(partial(module, x.detach(), *args))
    seconds = fwd_bwd_seconds(module, partial(module, x, *args), repeats)
    return flops / x[..., 0].numel() / 1e9, seconds * 1e3


def conv_rows(repeats: int) -> list[tuple[str, float, float]]:
    """(conv kind, forward GFLOP per token, forward+backward ms) at base width and the dev-guide shape."""
    base = get_config("base")
    x = torch.randn(BATCH, FRAMES, HEIGHT, WIDTH, base.width, requires_grad=True)
    rows = []
    for kind, cls in CONVOLUTIONS.items():
        torch.manual_seed(0)
        rows.append((kind, *module_cost(cls(base.width), x, None, repeats=repeats)))
    _, cond, _ = stpt_inputs(base.text_dim)
    with torch.no_grad():
        prompt = PromptEmbedding(base)(cond, BATCH, FRAMES)
    block = STPTBlock(get_config("base", conv="none"))
    rows.append(("(rest of a block: attention + cross + MLP)", *module_cost(block, x, prompt, None, None,
                                                                            repeats=repeats)))
    return rows


def attention_rows(repeats: int) -> list[tuple[str, float, float]]:
    """(attention, forward ms, forward+backward ms) at 24 x 12 x 20 tokens, batch 2, base width."""
    rows = []
    x = torch.randn(BATCH, 24, 12, 20, get_config("base").width, requires_grad=True)
    for label, stride in (("window (patch_stride 2)", 2), ("full (patch_stride 1)", 1)):
        torch.manual_seed(0)
        attn = WindowSelfAttention(get_config("base", patch_stride=stride))
        with torch.no_grad():
            forward = best_seconds(partial(attn, x, None), repeats)
        rows.append((label, forward * 1e3, fwd_bwd_seconds(attn, partial(attn, x, None), repeats) * 1e3))
    return rows


def gpu_rows() -> list[tuple[str, float]]:
    """paper-1b bf16 forward latency, batch 2 (guided + unguided) at 24 x 12 x 20 tokens; CUDA only."""
    config = get_config("paper-1b")
    with torch.device("cuda"):
        model = STPT(config).eval()
    tokens = torch.randint(0, config.codebook_size + 1, (2, 24, 12, 20), device="cuda")
    text = torch.randn(1, 77, config.text_dim, device="cuda")
    cond = STPTCondition(text=text, actions=torch.randn(1, 24, config.action_dim, device="cuda"))
    both = cond.concat(cond.unconditional())

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(tokens, both)
        torch.cuda.synchronize()

    seconds = best_seconds(forward, repeats=10, warmup=3)
    return [("paper-1b forward, bf16, batch 2 at 24x12x20 (ms)", seconds * 1e3),
            ("implied 10 decoding steps (s, network only)", seconds * 10)]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions per measurement (best is kept)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    torch.manual_seed(0)
    reference = MatmulReference()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x {FRAMES}x{HEIGHT}x{WIDTH} "
          f"tokens, {TEXT_TOKENS} text tokens\n")

    rows = throughput_rows(reference, args.repeats)
    print(f"fp32 matmul 2048^3: best in run {reference.best / 1e9:.1f} GFLOP/s\n")
    print(table(("model", "mode", "tokens/s", "GFLOP/token", "GFLOP/s", "/ matmul alongside", "/ best matmul"),
                [(*row[:4], row[4] / 1e9, row[4] / row[5], row[4] / reference.best) for row in rows]))
    speeds = {(name, mode): (speed, flops / matmul) for name, mode, speed, _, flops, matmul in rows}
    if ("phenaki-pytorch MaskGit", "forward+backward") not in speeds:
        print("\nphenaki-pytorch not installed: run with `uv run --group bench`")
    else:
        ours, theirs = speeds[("wd-stpt base", "forward+backward")], speeds[("phenaki-pytorch MaskGit", "forward+backward")]
        print(f"\nwd-stpt base / phenaki MaskGit, forward+backward: tokens/s {ours[0] / theirs[0]:.2f}x, "
              f"FLOP fraction (alongside) {ours[1] / theirs[1]:.2f}x")

    print("\n3D convolution variants, width 512, forward+backward of the conv alone:\n")
    print(table(("conv", "forward GFLOP/token", "forward+backward ms"), conv_rows(args.repeats)))
    print("\nSelf-attention module at 24 x 12 x 20 tokens, batch 2, width 512:\n")
    attention = attention_rows(args.repeats)
    print(table(("attention", "forward ms", "forward+backward ms"), attention))
    print(f"\nfull / window attention time: forward {attention[1][1] / attention[0][1]:.2f}x, "
          f"forward+backward {attention[1][2] / attention[0][2]:.2f}x")

    with torch.device("meta"):
        count = sum(p.numel() for p in STPT(get_config("paper-1b")).parameters())
    print(f"\npaper-1b parameters: {count / 1e9:.3f} B")
    if torch.cuda.is_available():
        print("\n" + table(("GPU: " + torch.cuda.get_device_name(), "value"), gpu_rows()))
    else:
        print("no CUDA device: GPU latency section skipped")


if __name__ == "__main__":
    main()
