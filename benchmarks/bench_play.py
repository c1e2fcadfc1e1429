"""`wd play`'s drive on this machine: frames per second shown and the time from a key press to the first frame that
reflects it, over decoding steps (10 down to 4) and the context each window leads with.

The drive runs as `wd play` runs it (DrivePlayer: the same scheduling, pacing, model turns and PNG frames), with
the WebSocket replaced by a recorder: times are taken when a frame is handed to the socket (a browser on
localhost adds a few milliseconds). A scripted driver switches between holding left and holding right every 1-2 s
(seeded); a press's latency runs to the first frame sent whose action row carries the new yaw (the "presses" column
counts those that reached a frame). Playback is at
the pipeline's frame rate, so "fps shown" tops out there; "capacity" is what the model could make (new frames per
window / window time). Context = the window's frames minus the new ones ("auto": `wd play`'s default, the
fewest new frames that keep up with playback).

Run (alone on the machine; the quickstart's pipeline):
    uv run wd quickstart                                   # once: writes wd-quickstart/pipeline
    uv run python benchmarks/bench_play.py --checkpoint wd-quickstart/pipeline
    uv run python benchmarks/bench_play.py --checkpoint wd-quickstart/pipeline --quick   # a check, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.play.drive import world_frame
from wd_cli.play.player import DriveOptions, DrivePlayer
from wd_cli.play.turns import ModelTurns

TARGET_FPS, TARGET_LATENCY = 8.0, 1.0
TAIL_SECONDS = 3.0  # driving on after the last press, so its frames arrive


@dataclass
class Row:
    steps: int
    frames_per_window: int | None  # None: auto
    shown_fps: float
    window_ms: float
    new_frames: float  # mean new frames per window
    latencies: list[float]
    presses: int

    @property
    def capacity(self) -> float:
        return self.new_frames / (self.window_ms / 1000)


async def drive(pipeline: WorldDreamerPipeline, steps: int, frames_per_window: int | None, seconds: float,
                warmup: float, seed: int) -> Row:
    """One setting: warm up, then drive `seconds` switching between left and right; -> the measurements."""
    sent: list[tuple[float, dict]] = []

    async def record(message: dict) -> None:
        sent.append((time.monotonic(), message))

    options = DriveOptions(fps=pipeline.defaults.fps, steps=steps, frames_per_window=frames_per_window)
    rng, presses = random.Random(seed), []
    with ThreadPoolExecutor(4) as executor:
        player = DrivePlayer(pipeline, ModelTurns(), executor, record, options)
        runner = asyncio.create_task(player.run())
        await player.reset(world_frame(pipeline, seed), seed=seed)
        held = "left"
        await player.key(held, True)
        await asyncio.sleep(warmup)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            await player.key(held, False)
            held = "right" if held == "left" else "left"
            await player.key(held, True)
            presses.append((time.monotonic(), player.controls.action(time.monotonic())[0]))
        end = time.monotonic()
        await asyncio.sleep(TAIL_SECONDS)  # the last press's frames
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    frames = [(at, message) for at, message in sent if message["type"] == "frame" and start <= at <= end]
    windows = [message for at, message in sent if message["type"] == "window" and start <= at <= end]
    latencies, later = [], [(at, message) for at, message in sent if message["type"] == "frame" and at >= start]
    for pressed, yaw in presses:
        reflected = next((at for at, message in later if at > pressed and message["action"][0] == yaw), None)
        if reflected is not None:
            latencies.append(reflected - pressed)
    shown = (len(frames) - 1) / (frames[-1][0] - frames[0][0]) if len(frames) > 1 else 0.0
    return Row(steps, frames_per_window, shown, 1000 * statistics.mean(w["seconds"] for w in windows),
               statistics.mean(w["frames"] for w in windows), latencies, len(presses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="wd-quickstart/pipeline", help="pipeline directory")
    parser.add_argument("--seconds", type=float, default=20.0, help="driving time measured per setting")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 8, 6, 4], help="decoding steps to measure")
    parser.add_argument("--quick", action="store_true", help="4 steps, two contexts, a few seconds each: a check")
    args = parser.parse_args()
    pipeline = WorldDreamerPipeline.from_pretrained(args.checkpoint, device="cpu", dtype="fp32")
    d = pipeline.defaults
    most = d.num_frames - d.context_frames
    steps_list = [4] if args.quick else args.steps
    windows: list[int | None] = [None, most] if args.quick else [None, *range(most, 0, -2)]
    seconds, warmup = (3.0, 1.0) if args.quick else (args.seconds, 3.0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pipeline {d.height}x{d.width}, windows of "
          f"{d.num_frames} frames, playback {d.fps:g} fps; {seconds:g} s per setting after {warmup:g} s warm-up")
    print(f"{'steps':>5} {'context':>9} {'new/window':>10} {'window ms':>9} {'capacity fps':>12} {'shown fps':>9} "
          f"{'vs 8 fps':>8} {'latency median s':>16} {'p90 s':>6} {'max s':>6} {'presses':>7}")
    for steps in steps_list:
        for frames_per_window in windows:
            row = asyncio.run(drive(pipeline, steps, frames_per_window, seconds, warmup, seed=0))
            context = "auto" if frames_per_window is None else str(d.num_frames - frames_per_window)
            if frames_per_window is None:
                context += f" ({d.num_frames - row.new_frames:.1f})"
            latencies = sorted(row.latencies) or [float("nan")]
            p90 = latencies[min(len(latencies) - 1, round(0.9 * (len(latencies) - 1)))]
            print(f"{steps:>5} {context:>9} {row.new_frames:>10.1f} {row.window_ms:>9.0f} {row.capacity:>12.1f} "
                  f"{row.shown_fps:>9.2f} {row.shown_fps / TARGET_FPS:>8.2f} {statistics.median(latencies):>16.2f} "
                  f"{p90:>6.2f} {max(latencies):>6.2f} {len(row.latencies):>3}/{row.presses:<3}")
    print(f"targets: shown fps >= {TARGET_FPS:g} (vs 8 fps >= 1.00) and latency < {TARGET_LATENCY:g} s")


if __name__ == "__main__":
    main()
