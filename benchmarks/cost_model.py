"""The floor we race against: FLOPs of one paper-shape video and the time they take at a given share of a GPU's
dense bf16 peak.

Run from the repo root:  uv run python benchmarks/cost_model.py      (a few seconds: nothing is computed)
The models are built on the meta device, so FlopCounterMode counts every matmul, convolution and attention of the
real forward from shapes alone (bench_stpt.py's counting rules); the numbers are exact for the code as it stands.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench_stpt import count_flops, table
from wd_stpt import STPT, STPTCondition, get_config
from wd_tokenizer import VQGAN
from wd_tokenizer import get_config as get_tokenizer_config

FRAMES, HEIGHT, WIDTH = 24, 12, 20  # 24 frames at 192 x 320 pixels through the f16 tokenizer
TRAIN_SHAPE = (16, 16, 16)  # the pretraining clip, tokens per sample
TOKENIZER = "open-muse-f16-8192"


@dataclass(frozen=True)
class GPU:
    """Dense (no sparsity) bf16 tensor-core peak and memory bandwidth, from the vendor's datasheet."""

    name: str
    bf16_flops: float
    bandwidth: float  # bytes/s


# NVIDIA's H100 and H200 datasheets list 1,979 TFLOP/s bf16 *with sparsity* for the SXM parts, i.e. 989 dense; the
# H200 is the H100's chip with more and faster memory. The paper's A800 is an A100 (312 dense bf16 TFLOP/s).
GPUS = (GPU("H100 SXM", 989e12, 3.35e12), GPU("H200 SXM", 989e12, 4.8e12), GPU("A800 SXM (the paper's)", 312e12,
                                                                              2.04e12))
SHARES = (0.4, 0.6)


def prompt(batch: int, text_tokens: int, text_dim: int) -> STPTCondition:
    """Guided sampling's batch: the prompt and its unconditional twin (meta tensors)."""
    return STPTCondition(text=torch.zeros(batch, text_tokens, text_dim),
                         text_mask=torch.ones(batch, text_tokens, dtype=torch.bool),
                         drop_prompt=torch.arange(batch) % 2 == 1)


def stpt_forward_flops(model: STPT, batch: int, text_tokens: int) -> int:
    tokens = torch.zeros(batch, FRAMES, HEIGHT, WIDTH, dtype=torch.long)
    cond = prompt(batch, text_tokens, model.config.text_dim)
    with torch.no_grad():
        return count_flops(lambda: model(tokens, cond))


def stpt_training_flops(model: STPT, text_tokens: int) -> int:
    """Forward + backward of one sample at TRAIN_SHAPE, cross-entropy over every token."""
    tokens = torch.zeros(1, *TRAIN_SHAPE, dtype=torch.long)
    cond = prompt(1, text_tokens, model.config.text_dim)

    def step() -> None:
        logits = model(tokens, cond)
        F.cross_entropy(logits.flatten(0, -2), tokens.flatten()).backward()

    return count_flops(step)


def decode_flops(frames: int) -> int:
    """The VQGAN decoder from quantized latents to pixels (the codebook lookup does no FLOPs)."""
    tokenizer = VQGAN(get_tokenizer_config(TOKENIZER)).eval()
    latents = torch.zeros(frames, tokenizer.config.embed_dim, HEIGHT, WIDTH)
    with torch.no_grad():
        return count_flops(lambda: tokenizer.decode_latents(latents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="decoding steps (the paper's 'about 10')")
    parser.add_argument("--text-tokens", type=int, default=77, help="prompt length of the T5 embeddings")
    args = parser.parse_args()
    with torch.device("meta"):
        model = STPT(get_config("paper-1b"))
        parameters = sum(param.numel() for param in model.parameters())
        step = stpt_forward_flops(model.eval(), 2, args.text_tokens)
        decode = decode_flops(FRAMES)
        training = stpt_training_flops(model.train(), args.text_tokens)
    video = args.steps * step + decode
    print(f"paper-1b ({parameters / 1e9:.3f} B parameters), {FRAMES} x {HEIGHT} x {WIDTH} tokens, guided batch 2 "
          f"(prompt + unconditional), {args.text_tokens} text tokens, {args.steps} steps; {TOKENIZER} decode of "
          f"{FRAMES} frames at {16 * HEIGHT} x {16 * WIDTH}\n")
    print(table(("work", "TFLOP"), [
        ("STPT forward, one step (batch 2)", step / 1e12),
        (f"STPT, {args.steps} steps", args.steps * step / 1e12),
        (f"VQ decode, {FRAMES} frames", decode / 1e12),
        ("one video", video / 1e12),
    ]))
    weights = args.steps * parameters * 2  # bf16 weights read once per step: the memory floor
    rows = [(gpu.name, gpu.bf16_flops / 1e12, *(video / (share * gpu.bf16_flops) for share in SHARES),
             weights / gpu.bandwidth * 1e3) for gpu in GPUS]
    print("\nTime one video's FLOPs take at a share of the dense bf16 peak (the sampler's own work, the text "
          "encoder and host overheads not included):\n")
    print(table(("GPU", "dense bf16 TFLOP/s", "s at 40%", "s at 60%", "weight reads, ms"), rows))
    hopper = GPUS[0].bf16_flops
    print(f"\nOn an H100 or H200 the 1.0 s target needs {video / hopper:.0%} of the peak on the FLOPs alone, the 0.6 s "
          f"goal {video / (0.6 * hopper):.0%}.")
    tokens = TRAIN_SHAPE[0] * TRAIN_SHAPE[1] * TRAIN_SHAPE[2]
    per_token = training / tokens
    print(f"\nTraining, forward + backward of one {'x'.join(map(str, TRAIN_SHAPE))} sample: {training / 1e12:.2f} "
          f"TFLOP, {per_token / 1e9:.2f} GFLOP per token; tokens/s at 45% of the peak:\n")
    print(table(("GPU", "tokens/s at 45% MFU"), [(gpu.name, 0.45 * gpu.bf16_flops / per_token) for gpu in GPUS]))


if __name__ == "__main__":
    main()
