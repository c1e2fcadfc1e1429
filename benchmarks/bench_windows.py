"""Seams of long videos: frame-to-frame change at window boundaries against inside windows, and against the truth.

Shapes clips `--windows` times the pipeline's window long are inpainted (the centre box), stylized (half the
tokens) and rolled out from their first frame (image-to-video), from the same task masks and seeds, three ways:
co-decoded spans (wd_cli.windowing's spans of half-overlapping windows decoded together: what the pipeline does
for edits), sequential windows (each window continues from the final frames of the one before: what the pipeline
does for rollouts, and did for everything in the previous round), and independent chunks of one window (what
inpainting and stylization did before that). For each pair of
consecutive frames the change is the mean absolute pixel difference over the region the task regenerates (the
whole frame for stylize and rollouts). A pair is a boundary when a network window or a span starts or ends
between its two frames. Each change is divided by the same pair's change in the tokenizer's round trip of the
true clip (so motion does not count), and the seam score is boundary ratio / inside ratio: 1 when boundaries
change as much as the video inside a window; the target is <= 1.2.

Run: uv run python benchmarks/bench_windows.py --pipeline wd-quickstart/pipeline (a quickstart's pipeline), or
--train-minutes M --out DIR to train the quickstart's pipeline into DIR/pipeline first (reused when it exists).
Check that it runs: --quick (2 clips, 2 decoding steps; with --train-minutes, 8 training clips per world).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import wd_masking
from wd_data.synthetic import ShapesWorld, eval_seeds

from wd_cli.evaluation import synthetic_worlds
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.quickstart import QuickstartConfig, build_pipeline
from wd_cli.windowing import SPAN_WINDOWS, LongVideo, WindowSampler, plan_windows, window_starts

Task = Callable[[WorldDreamerPipeline, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, np.ndarray]]


def inpaint_centre(pipe: WorldDreamerPipeline, tokens: torch.Tensor, seed: int):
    """The centre half of every frame regenerated: (tokens, known, pixel region bool (H, W))."""
    height, width = pipe.defaults.height, pipe.defaults.width
    box = (height // 4, width // 4, 3 * height // 4, 3 * width // 4)
    region = wd_masking.box_region(height, width, box)
    start = wd_masking.inpainting(tokens[None], region, pipe.mask_id, pipe.tokenizer.downsample_factor)
    return start[0][0], start[1][0], region.numpy()


def stylize_half(pipe: WorldDreamerPipeline, tokens: torch.Tensor, seed: int):
    """Half the tokens redrawn: (tokens, known, the whole frame)."""
    generator = torch.Generator().manual_seed(seed)
    start = wd_masking.stylization(tokens[None], 0.5, pipe.mask_id, generator=generator)
    return start[0][0], start[1][0], np.ones((pipe.defaults.height, pipe.defaults.width), dtype=bool)


def rollout(pipe: WorldDreamerPipeline, tokens: torch.Tensor, seed: int):
    """Image-to-video from the first frame: (tokens, known, the whole frame)."""
    start = wd_masking.image_to_video(tokens[None, :1], len(tokens), pipe.mask_id)
    return start[0][0], start[1][0], np.ones((pipe.defaults.height, pipe.defaults.width), dtype=bool)


TASKS: dict[str, Task] = {"inpaint": inpaint_centre, "stylize": stylize_half, "image2video": rollout}


def co_decoded(sample: WindowSampler, tokens, known, window: int, context: int) -> tuple[torch.Tensor, list[int]]:
    """The pipeline's spans -> (tokens, every frame where a network window or a span starts or ends inside)."""
    span = SPAN_WINDOWS * window
    spans = plan_windows(known.flatten(1).all(1).tolist(), window, context, span)
    edges = {part.new for part in spans[1:]}
    for part in spans:
        starts = [part.start + start for start in window_starts(part.end - part.start, window)]
        edges |= {start for start in starts[1:] if start > part.new} | {start + window for start in starts[:-1]}
    return LongVideo(tokens.clone(), known).run(sample, window, context, span), sorted(edges)


def sequential(sample: WindowSampler, tokens, known, window: int, context: int) -> tuple[torch.Tensor, list[int]]:
    """One window at a time, each from the final frames before it -> (tokens, the first frame of every later one)."""
    spans = plan_windows(known.flatten(1).all(1).tolist(), window, context)
    return LongVideo(tokens.clone(), known).run(sample, window, context), [span.new for span in spans[1:]]


def chunks(sample: WindowSampler, tokens, known, window: int, context: int) -> tuple[torch.Tensor, list[int]]:
    """Independent chunks of `window` frames, no context shared -> (tokens, the first frame of every later chunk)."""
    out = tokens.clone()
    for start in range(0, len(tokens), window):
        out[start : start + window] = sample(tokens[None, start : start + window],
                                             known[None, start : start + window], None)[0].cpu()
    return out, list(range(window, len(tokens), window))


WINDOWINGS = {"co-decoded spans": co_decoded, "sequential windows": sequential, "independent chunks": chunks}


def changes(frames: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N - 1,) mean absolute change between consecutive uint8 frames (N, H, W, 3), inside region (H, W)."""
    steps = np.abs(np.diff(frames.astype(np.float64), axis=0))
    return steps[:, region].mean(axis=(1, 2))


def seam_row(generated: list[np.ndarray], truth: list[np.ndarray], boundaries: list[np.ndarray]) -> tuple[float, ...]:
    """Over clips: mean change at boundary and inside pairs (generated, truth), their ratios and the seam score."""
    at = {"boundary": ([], []), "inside": ([], [])}
    for made, true, boundary in zip(generated, truth, boundaries, strict=True):
        for name, pairs in (("boundary", boundary), ("inside", ~boundary)):
            at[name][0].extend(made[pairs])
            at[name][1].extend(true[pairs])
    means = {name: (np.mean(made), np.mean(true)) for name, (made, true) in at.items()}
    boundary_ratio = means["boundary"][0] / means["boundary"][1]
    inside_ratio = means["inside"][0] / means["inside"][1]
    return (*means["boundary"], *means["inside"], boundary_ratio, inside_ratio, boundary_ratio / inside_ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=Path("wd-quickstart/pipeline"), help="pipeline directory")
    parser.add_argument("--train-minutes", type=float, help="train the quickstart's pipeline into --out/pipeline")
    parser.add_argument("--out", type=Path, default=Path("wd-windows"), help="where --train-minutes trains")
    parser.add_argument("--clips", type=int, default=16, help="held-out shapes clips")
    parser.add_argument("--windows", type=int, default=3, help="clip length in windows of the pipeline")
    parser.add_argument("--steps", type=int, help="decoding steps (default: the pipeline's)")
    parser.add_argument("--context", type=int, help="context frames per window (default: the pipeline's)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="tasks to measure")
    parser.add_argument("--quick", action="store_true", help="2 clips, 2 steps: check that the script runs")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.steps = 2, 2
    torch.set_num_threads(1)
    if args.train_minutes is not None:
        clips = dict(train_clips=8, tokenizer_clips=8) if args.quick else {}
        pipe = build_pipeline(QuickstartConfig(out_dir=args.out, minutes=args.train_minutes, **clips))
        args.pipeline = args.out / "pipeline"
    else:
        pipe = WorldDreamerPipeline.from_pretrained(args.pipeline, device="cpu")
    d = pipe.defaults
    context = d.context_frames if args.context is None else args.context
    total = args.windows * d.num_frames
    world = ShapesWorld(synthetic_worlds(d.height, d.width, total)[0])
    print(f"pipeline {args.pipeline}: window {d.num_frames} frames, context {context}, {d.height}x{d.width}; "
          f"{args.clips} clips of {total} frames")
    header = ("task", "windowing", "boundary change", "true", "inside change", "true", "boundary ratio",
              "inside ratio", "seam (target <= 1.2)")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for task in args.tasks:
        start = TASKS[task]
        for windowing, run in WINDOWINGS.items():
            if task == "image2video" and windowing == "independent chunks":
                continue  # a rollout never had independent chunks: the second chunk would have no first frame
            generated, truth, boundaries = [], [], []
            for index, seed in enumerate(eval_seeds(args.clips)):
                clip = world.render(seed)
                tokens = pipe.encode(clip.frames)
                masked, known, region = start(pipe, tokens, seed)
                sample = pipe.window_sampler(clip.caption, seed=index, steps=args.steps)
                out, edges = run(sample, masked, known, d.num_frames, context)
                boundary = np.zeros(total - 1, dtype=bool)
                boundary[np.array(edges, dtype=int) - 1] = True  # pair (edge - 1, edge)
                generated.append(changes(pipe.decode(out), region))
                truth.append(changes(pipe.decode(tokens), region))
                boundaries.append(boundary)
            numbers = seam_row(generated, truth, boundaries)
            print(f"| {task} | {windowing} | " + " | ".join(f"{value:.3f}" for value in numbers) + " |")


if __name__ == "__main__":
    main()
