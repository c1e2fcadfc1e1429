"""Sampler overhead per step (everything but the network call) against one `base` STPT forward.

Shape of the paper's fine-tuning videos: batch 2 x 24 frames x 12 x 20 tokens, codebook 8192.
The sampler runs with a dummy network that returns precomputed logits and times its own calls,
so what remains is the sampler's work. Forward and sampler runs alternate, so that load from
other jobs falls on both alike. Run: uv run python benchmarks/bench_sampler.py
"""

import statistics
import time

import torch
from wd_stpt import STPT, get_config

from wd_masking import SamplerConfig, sample, text_to_video

BATCH, FRAMES, HEIGHT, WIDTH, CODEBOOK = 2, 24, 12, 20, 8192
STEPS = 10
ROUNDS = 3
CASES = {
    "guided (beta 3)": SamplerConfig(steps=STEPS, guidance_scale=3.0),
    "unguided": SamplerConfig(steps=STEPS),
    "guided, plausibility 0.05": SamplerConfig(steps=STEPS, guidance_scale=3.0, plausibility=0.05),
}
# Measured once: the filter dominates its step and varies little.
FILTERED = ("guided, temperature 0.8, top-k 100",
            SamplerConfig(steps=STEPS, guidance_scale=3.0, temperature=0.8, top_k=100))


class PrecomputedModel:
    """Returns fixed logits for any batch of tokens; adds up the time spent inside its calls."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.seconds = 0.0

    def __call__(self, tokens: torch.Tensor, cond: object) -> torch.Tensor:
        start = time.perf_counter()
        logits = self.logits[: tokens.shape[0]]
        self.seconds += time.perf_counter() - start
        return logits


def forward_seconds(model: STPT, tokens: torch.Tensor) -> float:
    """Wall time of one STPT forward, no prompt."""
    start = time.perf_counter()
    with torch.no_grad():
        model(tokens, None)
    return time.perf_counter() - start


def sampler_step_seconds(config: SamplerConfig, logits: torch.Tensor, seed: int) -> float:
    """(sampler wall time - network time) / steps for one text-to-video run."""
    tokens, known = text_to_video(BATCH, FRAMES, HEIGHT, WIDTH, CODEBOOK)
    flags = torch.ones(BATCH)
    model = PrecomputedModel(logits)
    start = time.perf_counter()
    sample(model, tokens, known, mask_id=CODEBOOK, cond=flags, uncond=1 - flags, config=config,
           generator=torch.Generator().manual_seed(seed))
    return (time.perf_counter() - start - model.seconds) / config.steps


def main() -> None:
    torch.manual_seed(0)
    shape = f"{BATCH}x{FRAMES}x{HEIGHT}x{WIDTH}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tokens {shape}, "
          f"codebook {CODEBOOK}, {STEPS} steps, median of {ROUNDS} rounds")
    stpt = STPT(get_config("base", codebook_size=CODEBOOK)).eval()
    tokens = torch.randint(0, CODEBOOK + 1, (BATCH, FRAMES, HEIGHT, WIDTH))
    logits = 4 * torch.randn(2 * BATCH, FRAMES, HEIGHT, WIDTH, CODEBOOK)
    forward_seconds(stpt, tokens)  # warm-up: allocator, caches
    sampler_step_seconds(CASES["guided (beta 3)"], logits, seed=0)
    forwards: list[float] = []
    steps: dict[str, list[float]] = {name: [] for name in CASES}
    for round_index in range(ROUNDS):
        forwards.append(forward_seconds(stpt, tokens))
        for name, config in CASES.items():
            steps[name].append(sampler_step_seconds(config, logits, seed=round_index))
    forward = statistics.median(forwards)
    results = {name: statistics.median(times) for name, times in steps.items()}
    results[FILTERED[0]] = sampler_step_seconds(FILTERED[1], logits, seed=0)
    print(f"\n| sampler | overhead per step (ms) | "
          f"fraction of one base STPT forward ({forward * 1e3:.0f} ms) |")
    print("|---|---|---|")
    for name, step in results.items():
        print(f"| {name} | {step * 1e3:.0f} | {step / forward:.1%} |")


if __name__ == "__main__":
    main()
