"""Time positions past the table: stretch it, hold its last row, extrapolate it, or rotary time; and rows/columns
at another resolution.

Tiny STPTs (width 64, depth 2) learn the shapes world (one shape, the quickstart's motion) from 8-frame windows cut
anywhere from 16-frame clips, on a colour quantizer's tokens (each 4x4 cell -> its nearest of the background and
the four palette colours, 8x8 tokens a frame, so no tokenizer is trained). Each model is measured on held-out
clips by masked-token cross-entropy (nats) in two patterns: prediction (2 frames given, every other token
masked) and a random half of the tokens masked in every frame; at the trained 8 frames and at 16, past the
8-row time table:

- learned time table, 8 rows, trained once; at 16 frames it is either stretched to 16 rows (what wd_stpt does
  past the table), cut with the rows past it holding the last one, or cut with its last step extrapolated
  linearly;
- rotary time (RoPE over the frame index in every self-attention, no time table), trained the same way;
- no time position at all (only the 3D convolution tells frames apart), a control.

Then each is fine-tuned `--finetune-steps` at 16 frames, the paper's pre-train 16 / fine-tune 24 in small:
stretched, held, learned extension (the table grown to 16 rows by `fit_time_table`, the new rows learning their
own positions; what `init_from` does when `position_frames` is set to the new length) and rotary. Spatial: the
8-frame model at 12x12 tokens (48 px frames), rows and columns interpolated (what wd_stpt does) against held,
zero-shot.

Run: uv run python benchmarks/bench_positions.py [--seed 1] (12 minutes on one loaded core); --quick checks it runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from einops import rearrange
from wd_data.synthetic import BACKGROUND, PALETTE, ShapesWorld, eval_seeds
from wd_masking import MaskMixture, apply_mask, masked_cross_entropy, sample_training_mask, shared_frame_mask
from wd_stpt import STPT, get_config
from wd_stpt.attention import attention
from wd_stpt.layers import WindowSelfAttention
from wd_stpt.positions import FactorizedPositions, _resize, fit_time_table

from wd_cli.evaluation import synthetic_worlds

COLOURS = torch.tensor([BACKGROUND, *PALETTE.values()], dtype=torch.float32)
CODES, CELL, TRAIN_FRAMES, LONG_FRAMES = len(COLOURS), 4, 8, 16


def colour_tokens(frames: np.ndarray, cell: int = CELL) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> int64 (N, H / cell, W / cell): each cell's nearest colour of COLOURS."""
    means = torch.from_numpy(frames).float().unflatten(1, (-1, cell)).unflatten(3, (-1, cell)).mean(dim=(2, 4))
    return torch.cdist(means.flatten(0, 2), COLOURS).argmin(dim=1).view(means.shape[:3])


def clips(size: int, frames: int, seeds: range) -> torch.Tensor:
    """int64 (S, frames, size / 4, size / 4) colour tokens of shapes clips."""
    world = ShapesWorld(synthetic_worlds(size, size, frames)[0])
    return torch.stack([colour_tokens(world.render(seed).frames) for seed in seeds])


def _held(table: torch.Tensor, size: int) -> torch.Tensor:
    """(L, C) -> (size, C): rows 0..size-1, those past the table holding its last row."""
    return table[torch.arange(size).clamp(max=len(table) - 1)]


class HeldTime(FactorizedPositions):
    """Time rows past the table hold its last one."""

    def forward(self, frames: int, height: int, width: int) -> torch.Tensor:
        time = _held(self.time, frames)[:, None, None]
        return time + _resize(self.row, height)[None, :, None] + _resize(self.col, width)[None, None, :]


class ExtrapolatedTime(FactorizedPositions):
    """Time rows past the table continue its last step linearly."""

    def forward(self, frames: int, height: int, width: int) -> torch.Tensor:
        rows = _held(self.time, frames)
        if len(self.time) > 1:
            past = (torch.arange(frames) - (len(self.time) - 1)).clamp(min=0)[:, None].to(rows)
            rows = rows + past * (self.time[-1] - self.time[-2])
        return rows[:, None, None] + _resize(self.row, height)[None, :, None] + _resize(self.col, width)[None, None, :]


class HeldSpace(FactorizedPositions):
    """Rows and columns past their tables hold the last one (the spatial alternative to interpolating)."""

    def forward(self, frames: int, height: int, width: int) -> torch.Tensor:
        return (_resize(self.time, frames)[:, None, None] + _held(self.row, height)[None, :, None]
                + _held(self.col, width)[None, None, :])


class RotaryTimeAttention(WindowSelfAttention):
    """Window self-attention with queries and keys rotated by their frame index (1D RoPE on time)."""

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        frames, height = x.shape[1], x.shape[2]
        s = self.stride
        q, k, v = rearrange(self.qkv(x), "b n (sh hh) (sw ww) (three heads d) -> three b (sh sw heads) (n hh ww) d",
                            sh=s, sw=s, three=3, heads=self.num_heads)
        frame = torch.arange(q.shape[2], device=x.device) // (q.shape[2] // frames)
        half = q.shape[-1] // 2
        angle = frame[:, None] * 10000 ** (-torch.arange(half, device=x.device) / half)
        cos, sin = angle.cos(), angle.sin()

        def rotate(t: torch.Tensor) -> torch.Tensor:
            first, second = t[..., :half], t[..., half:]
            return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)

        out = attention(rotate(q), rotate(k), v, frame_mask, self.backend)
        out = rearrange(out, "b (sh sw heads) (n hh ww) d -> b n (sh hh) (sw ww) (heads d)",
                        sh=s, sw=s, heads=self.num_heads, n=frames, hh=height // s)
        return self.proj(out)


def model(time: str, table_frames: int = TRAIN_FRAMES) -> STPT:
    """A tiny STPT whose time positions are `time`: learned (wd_stpt's table), rotary or none (no time table)."""
    config = get_config("tiny", codebook_size=CODES, text_dim=8, position_frames=table_frames, position_height=8,
                        position_width=8)
    net = STPT(config)
    if time in ("rotary", "none"):
        net.positions.time.data.zero_()
        net.positions.time.requires_grad_(False)
    if time == "rotary":
        for block in net.blocks:
            rotary = RotaryTimeAttention(config)
            rotary.load_state_dict(block.attn.state_dict())
            block.attn = rotary
    return net


def with_positions(net: STPT, kind: type[FactorizedPositions]) -> STPT:
    """A copy of net whose positions module is `kind`, with the same tables."""
    twin = copy.deepcopy(net)
    table = twin.positions
    twin.positions = kind(table.time.shape[1], len(table.time), len(table.row), len(table.col))
    twin.positions.load_state_dict(table.state_dict())
    return twin


def train(net: STPT, data: torch.Tensor, frames: int, steps: int, seed: int, batch: int = 8) -> STPT:
    """`steps` of AdamW on windows of `frames` cut anywhere from data (S, T, h, w), the quickstart's mask mixture
    without boxes (half shared, half prefix)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-3)
    mixture = MaskMixture(shared=0.5, prefix=0.5, box=0.0)
    net.train()
    for _ in range(steps):
        picks = torch.randint(len(data), (batch,), generator=generator)
        starts = torch.randint(data.shape[1] - frames + 1, (batch,), generator=generator)
        tokens = torch.stack([data[p, s : s + frames] for p, s in zip(picks.tolist(), starts.tolist(), strict=True)])
        masked = sample_training_mask(*tokens.shape, mixture, generator=generator)
        logits = net(apply_mask(tokens, masked, CODES))
        loss = masked_cross_entropy(logits, tokens, masked).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def cross_entropy(net: STPT, tokens: torch.Tensor) -> tuple[float, float]:
    """(prediction CE, random-half CE) of net on tokens (S, N, h, w), in nats."""
    predict = torch.ones_like(tokens, dtype=torch.bool)
    predict[:, :2] = False
    generator = torch.Generator().manual_seed(0)
    half = shared_frame_mask(*tokens.shape, schedule="linear", generator=generator)
    results = []
    for masked in (predict, half):
        logits = net(apply_mask(tokens, masked, CODES))
        results.append(float(masked_cross_entropy(logits, tokens, masked).loss))
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--clips", type=int, default=512, help="training clips (16 frames each)")
    parser.add_argument("--eval-clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    parser.add_argument("--quick", action="store_true", help="a few steps and clips: check that the script runs")
    args = parser.parse_args()
    if args.quick:
        args.train_steps, args.finetune_steps, args.clips, args.eval_clips = 4, 2, 8, 2
    torch.set_num_threads(1)
    started = time.monotonic()
    data = clips(32, LONG_FRAMES, range(args.clips))
    held_out = clips(32, LONG_FRAMES, eval_seeds(args.eval_clips))
    wide = clips(48, TRAIN_FRAMES, eval_seeds(args.eval_clips))
    rows: list[tuple[str, str, tuple[float, float], tuple[float, float]]] = []

    def measure(name: str, trained: str, net: STPT) -> None:
        rows.append((name, trained, cross_entropy(net, held_out[:, :TRAIN_FRAMES]), cross_entropy(net, held_out)))

    torch.manual_seed(args.seed)
    learned = train(model("learned"), data, TRAIN_FRAMES, args.train_steps, seed=args.seed + 1)
    rotary = train(model("rotary"), data, TRAIN_FRAMES, args.train_steps, seed=args.seed + 1)
    untimed = train(model("none"), data, TRAIN_FRAMES, args.train_steps, seed=args.seed + 1)
    base = f"{args.train_steps} steps at 8"
    measure("learned table, stretched past it (wd_stpt)", base, learned)
    measure("learned table, rows past it held", base, with_positions(learned, HeldTime))
    measure("learned table, extrapolated linearly", base, with_positions(learned, ExtrapolatedTime))
    measure("rotary time", base, rotary)
    measure("no time position (conv only)", base, untimed)

    tuned = f"+ {args.finetune_steps} at 16"
    finetunes: dict[str, Callable[[], STPT]] = {
        "learned table, stretched": lambda: copy.deepcopy(learned),
        "learned table, held": lambda: with_positions(learned, HeldTime),
        "learned extension (table grown to 16 rows)": lambda: _grown(learned),
        "rotary time": lambda: copy.deepcopy(rotary),
    }
    for name, start in finetunes.items():
        measure(name, tuned, train(start(), data, LONG_FRAMES, args.finetune_steps, seed=args.seed + 2))

    print(f"seed {args.seed}, {args.clips} training clips, {args.eval_clips} held-out clips; masked-token "
          f"cross-entropy in nats "
          f"(uniform guess: {math.log(CODES):.3f})\n")
    print("| positions | trained | prediction, 8 frames | prediction, 16 | random half, 8 | random half, 16 |")
    print("|---|---|---|---|---|---|")
    for name, trained, short, long in rows:
        print(f"| {name} | {trained} | {short[0]:.3f} | {long[0]:.3f} | {short[1]:.3f} | {long[1]:.3f} |")
    spatial = {"rows and columns interpolated (wd_stpt)": learned, "rows and columns held": _held_space(learned)}
    print("\n| spatial positions | prediction, 8x8 tokens | prediction, 12x12 | random half, 8x8 "
          "| random half, 12x12 |")
    print("|---|---|---|---|---|")
    for name, net in spatial.items():
        small, large = cross_entropy(net, held_out[:, :TRAIN_FRAMES]), cross_entropy(net, wide)
        print(f"| {name} | {small[0]:.3f} | {large[0]:.3f} | {small[1]:.3f} | {large[1]:.3f} |")
    print(f"\n{time.monotonic() - started:.0f} s")


def _grown(net: STPT) -> STPT:
    """net with its time table grown to LONG_FRAMES rows (held last row), as init_from does for a longer clip."""
    grown = STPT(dataclasses.replace(net.config, position_frames=LONG_FRAMES))
    grown.load_state_dict(fit_time_table(net.state_dict(), LONG_FRAMES))
    return grown


def _held_space(net: STPT) -> STPT:
    return with_positions(net, HeldSpace)


if __name__ == "__main__":
    main()
