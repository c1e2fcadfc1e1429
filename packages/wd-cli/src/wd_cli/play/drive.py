"""The drive's logic, free of the web server: held keys -> actions, when to start a window and how many frames it
adds, and the drive itself (a `wd_cli.windowing.LongVideo` grown one window at a time).

Actions follow the drive world (`wd_data.synthetic.drive`): row i is (yaw change rad, speed m/s), the move from
frame i to frame i + 1, left positive. The actions held when a window is scheduled drive every move into the
frames it generates: rows [new - 1, end - 1), as `wd eval`'s long rollouts assign them. Row new - 1 belongs to
the last frame already shown; it is decided only now, when the next frame is about to be made.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from wd_data.synthetic import DriveConfig, DriveWorld

from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.windowing import LongVideo

Action = tuple[float, float]  # (yaw change rad per frame, speed m/s)
KEYS = ("left", "right", "up", "down")
CSV_HEADER = ("yaw_change", "speed")
# A window is asked for this much faster than playback needs, so a slower window now and then does not stall it.
HEADROOM = 1.25


@dataclass(frozen=True)
class DriveSettings:
    """How keys map to actions; the defaults suit the quickstart's drive world (turns up to 0.12 rad a frame,
    2-12 m/s)."""

    turn_yaw: float = 0.06  # rad per frame while left or right is held: the road stays in view for many frames
    start_speed: float = 6.0  # m/s after a reset
    max_speed: float = 12.0
    acceleration: float = 4.0  # m/s gained (up) or lost (down) per second the key is held

    def __post_init__(self) -> None:
        if not (self.turn_yaw > 0 and self.max_speed > 0 and self.acceleration > 0):
            raise ValueError(f"turn_yaw, max_speed and acceleration must be > 0, got {self}")
        if not 0 <= self.start_speed <= self.max_speed:
            raise ValueError(f"start_speed must be in [0, max_speed={self.max_speed}], got {self.start_speed}")


class Controls:
    """Held keys -> the action at any moment. Left/right hold a turn; up/down change the speed at `acceleration`
    for as long as they are held, and the speed stays when they are released. Times are seconds on any clock."""

    def __init__(self, settings: DriveSettings, now: float) -> None:
        self.settings = settings
        self._held: set[str] = set()
        self._speed, self._since = settings.start_speed, now  # speed at `_since`, the last key change

    def press(self, key: str, now: float) -> None:
        self._change(key, now, held=True)

    def release(self, key: str, now: float) -> None:
        self._change(key, now, held=False)

    def release_all(self, now: float) -> None:
        """Every key up (the page lost focus)."""
        for key in list(self._held):
            self.release(key, now)

    def action(self, now: float) -> Action:
        """(yaw change, speed) at time `now` (not before the last key change)."""
        steer = ("left" in self._held) - ("right" in self._held)
        return steer * self.settings.turn_yaw, self._speed_at(now)

    def _speed_at(self, now: float) -> float:
        # The rate is constant between key changes, so clamping the end of the segment is exact.
        rate = self.settings.acceleration * (("up" in self._held) - ("down" in self._held))
        return min(self.settings.max_speed, max(0.0, self._speed + rate * max(0.0, now - self._since)))

    def _change(self, key: str, now: float, held: bool) -> None:
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r}; expected one of {KEYS}")
        self._speed, self._since = self._speed_at(now), max(now, self._since)
        (self._held.add if held else self._held.discard)(key)


def frames_per_window(window_seconds: float | None, fps: float, most: int) -> int:
    """New frames the next window makes: the fewest (so each window leads with the most context, and a key
    reaches the screen soonest) that still keep up with playback at `fps` with HEADROOM, given the measured
    seconds one window takes (None before the first: `most`); never more than `most`."""
    if most < 1 or not fps > 0:
        raise ValueError(f"need most >= 1 and fps > 0, got most={most}, fps={fps}")
    if window_seconds is None:
        return most
    return max(1, min(most, math.ceil(HEADROOM * fps * window_seconds)))


def should_start_window(buffered_frames: int, fps: float, window_seconds: float | None) -> bool:
    """Start the next window once the frames waiting to be shown last no longer than a window takes to make (so
    its frames arrive as the last ones are shown, with the freshest actions); before the first, at once."""
    return window_seconds is None or buffered_frames / fps <= window_seconds


def world_frame(pipeline: WorldDreamerPipeline, seed: int) -> np.ndarray:
    """The drive world's first frame for `seed` at the pipeline's frame size, uint8 (H, W, 3)."""
    config = DriveConfig(height=pipeline.defaults.height, width=pipeline.defaults.width, num_frames=1)
    return DriveWorld(config).render(seed).frames[0]


def can_drive(pipeline: WorldDreamerPipeline) -> bool:
    """Whether the pipeline takes (yaw change, speed) actions."""
    return pipeline.stpt.config.action_dim == len(CSV_HEADER)


# emit(index, frame uint8 (H, W, 3), the action into that frame) as each new frame is decoded.
FrameSink = Callable[[int, np.ndarray, Action], None]


class DriveSession:
    """One drive from a first frame: each `advance` generates one window with the action given (this class is the
    one place that meets `wd_cli.windowing`: LongVideo.append/step and the pipeline's window_sampler)."""

    def __init__(self, pipeline: WorldDreamerPipeline, first_frame: np.ndarray, seed: int = 0,
                 steps: int | None = None) -> None:
        if not can_drive(pipeline):
            raise ValueError(f"driving needs a pipeline with {len(CSV_HEADER)}-dim (yaw change, speed) actions; "
                             f"this one has action_dim={pipeline.stpt.config.action_dim}")
        self.pipeline = pipeline
        tokens = pipeline.encode(first_frame)[:1]  # (1, h, w)
        self._video = LongVideo(tokens, torch.ones_like(tokens, dtype=torch.bool), torch.zeros(1, len(CSV_HEADER)),
                                done=1)
        self._between_steps: Callable[[], None] = lambda: None
        options = {} if steps is None else {"steps": steps}
        self._sample = pipeline.window_sampler("", seed=seed, callback=lambda step, tokens: self._between_steps(),
                                               **options)

    @property
    def most_frames(self) -> int:
        """The most new frames one window makes (the rest of it is at least the pipeline's context)."""
        return self.pipeline.defaults.num_frames - self.pipeline.defaults.context_frames

    @property
    def length(self) -> int:
        """Frames generated so far, the first included."""
        return self._video.done

    def first_frame(self) -> np.ndarray:
        """Frame 0 as the tokenizer reproduces it, uint8 (H, W, 3)."""
        return self.pipeline.decode(self._video.tokens[:1])[0]

    def advance(self, frames: int, action: Action, emit: FrameSink,
                between_steps: Callable[[], None] = lambda: None) -> None:
        """Generate `frames` (<= most_frames) new frames, `action` driving every move into them; emit each as it is
        decoded. `between_steps()` runs after every decoding step (a Cancelled it raises ends the drive: make a
        new session)."""
        if not 1 <= frames <= self.most_frames:
            raise ValueError(f"frames must be in [1, {self.most_frames}], got {frames}")
        if self._video.done != len(self._video.tokens):
            raise RuntimeError("an earlier window of this drive did not finish; start a new drive")
        row = torch.tensor(action, dtype=torch.float32)
        self._video.actions[-1] = row  # the move out of the last final frame
        self._video.append(frames, row.expand(frames, -1))
        self._between_steps = between_steps
        defaults = self.pipeline.defaults
        while (span := self._video.step(self._sample, defaults.num_frames, defaults.context_frames)) is not None:
            for index in range(span.new, span.end):
                emit(index, self.pipeline.decode(self._video.tokens[index : index + 1])[0], action)

    def actions(self, frames: int) -> np.ndarray:
        """float32 (frames, 2): row i conditions frame i (the move out of it), as `wd generate --actions` reads."""
        return self._video.actions[:frames].numpy().copy()


def actions_csv(actions: np.ndarray) -> str:
    """The CSV `wd generate --task action2video --actions` reads: a header, then one row per frame."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows([f"{value:.6g}" for value in row] for row in np.asarray(actions, dtype=np.float64))
    return buffer.getvalue()
