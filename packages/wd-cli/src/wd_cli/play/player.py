"""One tab's drive, live: windows are made on the model turns while the frames waiting to be shown run low, and
frames go out at the playback rate. Transport-free (a `send` coroutine takes each message), so the benchmark
drives it as the server does."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.play.drive import Action, Controls, DriveSession, DriveSettings, frames_per_window, should_start_window
from wd_cli.play.turns import Cancelled, CancelToken, ModelTurns, Turn

Send = Callable[[dict], Awaitable[None]]
# Weight of the newest window's time in the running estimate: follows another tab starting or stopping within
# a few windows without jumping at one slow window.
_WINDOW_TIME_WEIGHT = 0.5


@dataclass(frozen=True)
class DriveOptions:
    """How a drive plays; one field per `wd play` flag."""

    fps: float  # playback frames per second
    steps: int | None = None  # decoding steps per window (None: the pipeline's)
    frames_per_window: int | None = None  # new frames per window (None: adapt, see drive.frames_per_window)
    max_frames: int = 4000  # the drive stops at this length (its frames are kept for the download)
    settings: DriveSettings = field(default_factory=DriveSettings)

    def __post_init__(self) -> None:
        if not self.fps > 0 or self.max_frames < 2:
            raise ValueError(f"need fps > 0 and max_frames >= 2, got fps={self.fps}, max_frames={self.max_frames}")
        if self.frames_per_window is not None and self.frames_per_window < 1:
            raise ValueError(f"frames_per_window must be >= 1, got {self.frames_per_window}")


@dataclass(frozen=True)
class ShownFrame:
    """A frame on its way to the page: its index in the drive, PNG bytes and the action that led into it."""

    index: int
    png: bytes
    action: Action | None  # None for the first frame

    def message(self) -> dict:
        return {"type": "frame", "index": self.index, "action": self.action, "image": data_url(self.png)}


def png_bytes(frame: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG bytes as a data: URL an <img> shows."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


class DrivePlayer:
    """The drive of one tab. `run()` plays until cancelled; `reset`, `key`, `set_playing` come from the page."""

    def __init__(self, pipeline: WorldDreamerPipeline, turns: ModelTurns, executor: Executor, send: Send,
                 options: DriveOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline, self.turns, self.executor, self.send, self.options = pipeline, turns, executor, send, options
        self.clock = clock
        self.controls = Controls(options.settings, clock())
        self.playing = True
        self.window_seconds: float | None = None  # running estimate of one window's wall time
        self._session: DriveSession | None = None
        self._failed = False  # the drive's last window raised: no more windows until a reset
        self._epoch = 0  # bumped by reset: frames of an older drive are dropped
        self._token = CancelToken()  # cancels the current drive's work
        self._buffer: deque[ShownFrame] = deque()
        self._shown: list[ShownFrame] = []  # every frame sent, frame 0 first
        self._changed = asyncio.Event()  # set whenever something the loops wait for may have changed

    # -- from the page -------------------------------------------------------------------------------------------

    async def reset(self, first_frame: np.ndarray, seed: int = 0) -> None:
        """Start a new drive from first_frame uint8 (H, W, 3) (any size: fitted); the old one's work is cancelled."""
        self._token.cancel()
        self._token, self._epoch = CancelToken(), self._epoch + 1
        token, epoch = self._token, self._epoch
        self._session, self._failed = None, False
        self._buffer.clear()
        self._shown.clear()
        self.controls = Controls(self.options.settings, self.clock())
        try:
            session, first = await self._in_turn(token, self._start, first_frame, seed)
        except Cancelled:
            return  # a newer reset won
        if epoch == self._epoch:
            self._session = session
            await self._show(first)
            self._changed.set()

    async def key(self, key: str, down: bool) -> None:
        """A key (drive.KEYS) went down or up."""
        (self.controls.press if down else self.controls.release)(key, self.clock())
        await self.send({"type": "held", "action": self.controls.action(self.clock())})

    async def release_all(self) -> None:
        self.controls.release_all(self.clock())
        await self.send({"type": "held", "action": self.controls.action(self.clock())})

    async def set_playing(self, playing: bool) -> None:
        self.playing = playing
        await self.send({"type": "playing", "playing": playing})
        self._changed.set()

    def close(self) -> None:
        """Cancel the drive's work (the tab went away)."""
        self._token.cancel()

    def recording(self) -> tuple[list[bytes], np.ndarray]:
        """The frames shown so far (PNG bytes, frame 0 first) and their actions float32 (N, 2) (row i: the move out
        of frame i)."""
        frames = [frame.png for frame in self._shown]
        actions = self._session.actions(len(frames)) if self._session is not None else np.zeros((0, 2), np.float32)
        return frames, actions

    # -- the two loops -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Make windows and show frames until cancelled (the tab closed); cancels the drive's work on the way out."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._make_windows())
                group.create_task(self._show_frames())
        finally:
            self.close()

    async def _make_windows(self) -> None:
        while True:
            await self._wait_until(self._wants_window)
            session, token, epoch = self._session, self._token, self._epoch
            frames = self.options.frames_per_window or frames_per_window(self.window_seconds, self.options.fps,
                                                                         session.most_frames)
            frames = min(frames, session.most_frames, self.options.max_frames - session.length)
            action = self.controls.action(self.clock())
            started = self.clock()
            try:
                await self._in_turn(token, self._advance, session, frames, action, epoch, asyncio.get_running_loop())
            except Cancelled:
                continue  # reset: the next window belongs to the new drive
            except Exception as error:  # a broken drive must not end the tab: report it and wait for a reset
                if epoch == self._epoch:
                    self._failed = True
                    await self.send({"type": "error", "message": f"the drive stopped: {error}; reset to go on"})
                continue
            elapsed = self.clock() - started
            self.window_seconds = elapsed if self.window_seconds is None else (
                _WINDOW_TIME_WEIGHT * elapsed + (1 - _WINDOW_TIME_WEIGHT) * self.window_seconds)
            await self.send({"type": "window", "frames": frames, "seconds": elapsed})
            if session.length >= self.options.max_frames and epoch == self._epoch:
                await self.send({"type": "notice", "message": f"the drive reached {session.length} frames (--max-"
                                 "drive-frames): download it, or reset to drive again"})

    def _wants_window(self) -> bool:
        return (self._session is not None and not self._failed and self.playing
                and self._session.length < self.options.max_frames
                and should_start_window(len(self._buffer), self.options.fps, self.window_seconds))

    async def _show_frames(self) -> None:
        due = self.clock()
        while True:
            await self._wait_until(lambda: self.playing and bool(self._buffer))
            if (delay := due - self.clock()) > 0:
                await asyncio.sleep(delay)
                continue  # paused or reset meanwhile? look again
            await self._show(self._buffer.popleft())
            # Keep to the frame grid when a frame went out a little late; start a new one after a stall.
            period, now = 1 / self.options.fps, self.clock()
            due = (due if now - due < period else now) + period
            self._changed.set()

    # -- helpers -------------------------------------------------------------------------------------------------

    async def _show(self, frame: ShownFrame) -> None:
        self._shown.append(frame)
        await self.send(frame.message())

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        # The event loop runs one coroutine at a time: no change can slip in between the check and the clear.
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def _in_turn(self, token: CancelToken, work: Callable[..., object], *args: object) -> object:
        """work(turn, *args) in a worker thread, holding a model turn."""

        def in_turn() -> object:
            with self.turns.turn(token) as turn:
                return work(turn, *args)

        return await asyncio.get_running_loop().run_in_executor(self.executor, in_turn)

    def _start(self, turn: Turn, first_frame: np.ndarray, seed: int) -> tuple[DriveSession, ShownFrame]:
        session = DriveSession(self.pipeline, first_frame, seed=seed, steps=self.options.steps)
        return session, ShownFrame(0, png_bytes(session.first_frame()), None)

    def _advance(self, turn: Turn, session: DriveSession, frames: int, action: Action, epoch: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        def emit(index: int, frame: np.ndarray, into: Action) -> None:
            loop.call_soon_threadsafe(self._arrived, epoch, ShownFrame(index, png_bytes(frame), into))

        session.advance(frames, action, emit, between_steps=turn.between_steps)

    def _arrived(self, epoch: int, frame: ShownFrame) -> None:
        if epoch == self._epoch:
            self._buffer.append(frame)
            self._changed.set()
