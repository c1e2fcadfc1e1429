"""A tab's live drive (`DrivePlayer`) on the tiny pipeline, without a server: frames stream in order, a key held
reaches the frames after it, pause holds frames back, reset starts over, and a closed tab's waiting work leaves
the model's queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from wd_cli.play.drive import DriveSession, world_frame
from wd_cli.play.player import DriveOptions, DrivePlayer
from wd_cli.play.turns import CancelToken, ModelTurns

FPS = 40.0  # fast playback keeps the tests short; the tiny pipeline keeps up or streams as it can


class Page:
    """Stands in for the browser: keeps every message the player sends."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def frames(self) -> list[dict]:
        return [message for message in self.messages if message["type"] == "frame"]

    async def until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out waiting for the drive"
            await asyncio.sleep(0.01)


def _drive(pipeline, scenario, turns: ModelTurns | None = None, **options) -> Page:
    """Run scenario(player, page) against a playing DrivePlayer; -> the page."""
    page = Page()

    async def main() -> None:
        with ThreadPoolExecutor(4) as executor:
            player = DrivePlayer(pipeline, turns or ModelTurns(), executor, page.send, DriveOptions(fps=FPS, **options))
            runner = asyncio.create_task(player.run())
            try:
                await scenario(player, page)
            finally:
                runner.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await runner

    asyncio.run(main())
    return page


def test_frames_stream_in_order_and_a_held_key_reaches_the_frames_after_it(tiny_pipeline) -> None:
    recorded = {}

    async def scenario(player: DrivePlayer, page: Page) -> None:
        await player.reset(world_frame(tiny_pipeline, 0))
        await page.until(lambda: len(page.frames) >= 5)
        await player.key("left", True)
        shown_before_press = len(page.frames)
        await page.until(lambda: any(frame["action"][0] > 0 for frame in page.frames[1:]))
        await page.until(lambda: len(page.frames) >= shown_before_press + 8)
        await player.key("left", False)
        recorded["frames"], recorded["actions"] = player.recording()
        recorded["shown_before_press"] = shown_before_press

    page = _drive(tiny_pipeline, scenario)
    frames = page.frames[: len(recorded["frames"])]
    assert [frame["index"] for frame in frames] == list(range(len(frames)))
    assert frames[0]["action"] is None
    yaws = [frame["action"][0] for frame in frames[1:]]
    turned = yaws.index(0.06)
    assert turned + 1 >= recorded["shown_before_press"]  # no frame shown before the press turns
    assert set(yaws[:turned]) == {0.0} and set(yaws[turned:]) == {0.06}  # and every frame after its first does
    assert {"type": "held", "action": [0.06, 6.0]} in [{**m, "action": list(m["action"])} for m in page.messages
                                                        if m["type"] == "held"]
    # The recording: a PNG per frame shown, and row i - 1 of its actions is the move into frame i.
    assert len(recorded["frames"]) == len(recorded["actions"]) and recorded["frames"][0].startswith(b"\x89PNG")
    assert np.allclose(recorded["actions"][: len(frames) - 1], [frame["action"] for frame in frames[1:]])


def test_pause_holds_frames_back_and_play_goes_on(tiny_pipeline) -> None:
    async def scenario(player: DrivePlayer, page: Page) -> None:
        await player.reset(world_frame(tiny_pipeline, 0))
        await page.until(lambda: len(page.frames) >= 3)
        await player.set_playing(False)
        await asyncio.sleep(0.3)
        paused_at = len(page.frames)
        await asyncio.sleep(1.0)
        assert len(page.frames) == paused_at
        await player.set_playing(True)
        await page.until(lambda: len(page.frames) >= paused_at + 3)

    page = _drive(tiny_pipeline, scenario)
    assert [frame["index"] for frame in page.frames] == list(range(len(page.frames)))
    assert [m["playing"] for m in page.messages if m["type"] == "playing"] == [False, True]


def test_reset_starts_a_new_drive_and_drops_the_old_ones_frames(tiny_pipeline) -> None:
    async def scenario(player: DrivePlayer, page: Page) -> None:
        await player.reset(world_frame(tiny_pipeline, 0))
        await page.until(lambda: len(page.frames) >= 4)
        page.messages.append({"type": "marker"})
        await player.reset(np.full((50, 70, 3), 200, np.uint8))  # an upload of another size: fitted
        await page.until(lambda: len(page.frames) >= 12)

    page = _drive(tiny_pipeline, scenario)
    after = [m for m in page.messages[page.messages.index({"type": "marker"}):] if m["type"] == "frame"]
    assert [frame["index"] for frame in after] == list(range(len(after)))


def test_the_drive_pauses_at_its_length_limit(tiny_pipeline) -> None:
    async def scenario(player: DrivePlayer, page: Page) -> None:
        await player.reset(world_frame(tiny_pipeline, 0))
        await page.until(lambda: any(m["type"] == "notice" for m in page.messages))
        await asyncio.sleep(0.3)

    page = _drive(tiny_pipeline, scenario, max_frames=5)
    assert [frame["index"] for frame in page.frames] == [0, 1, 2, 3, 4]
    assert "reached 5 frames" in next(m["message"] for m in page.messages if m["type"] == "notice")


def test_closing_a_tab_takes_its_waiting_window_out_of_the_queue(tiny_pipeline) -> None:
    turns = ModelTurns()

    async def scenario(player: DrivePlayer, page: Page) -> None:
        with turns.turn(CancelToken()):  # another tab computes: this drive's start must wait
            reset = asyncio.create_task(player.reset(world_frame(tiny_pipeline, 0)))
            await page.until(lambda: turns.queued == 2)
            player.close()
            await page.until(lambda: turns.queued == 1, timeout=5.0)
        await reset
        assert page.frames == []

    _drive(tiny_pipeline, scenario, turns=turns)


def test_a_failing_window_is_reported_and_a_reset_drives_on(tiny_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    calls, advance = [], DriveSession.advance

    def fails_once(session: DriveSession, *args, **kwargs) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        advance(session, *args, **kwargs)

    monkeypatch.setattr(DriveSession, "advance", fails_once)

    async def scenario(player: DrivePlayer, page: Page) -> None:
        await player.reset(world_frame(tiny_pipeline, 0))
        await page.until(lambda: any(m["type"] == "error" for m in page.messages))
        await asyncio.sleep(0.5)
        assert [frame["index"] for frame in page.frames] == [0] and len(calls) == 1  # stopped, not retrying
        frames, actions = player.recording()
        assert len(frames) == len(actions) == 1
        await player.reset(world_frame(tiny_pipeline, 1))
        await page.until(lambda: len(page.frames) >= 5)

    page = _drive(tiny_pipeline, scenario)
    assert "the drive stopped: out of memory" in next(m["message"] for m in page.messages if m["type"] == "error")
