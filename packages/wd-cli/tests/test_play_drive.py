"""`wd play`'s drive logic without a server: action timing (keys -> actions over time, which action rows each
window reads), window scheduling (where windows go, how many frames they add, when they start), the model's
turns and cancellation."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_cli.media import parse_actions
from wd_cli.pipeline import PipelineDefaults
from wd_cli.play.drive import (
    HEADROOM,
    KEYS,
    Controls,
    DriveSession,
    DriveSettings,
    FrameSink,
    actions_csv,
    frames_per_window,
    should_start_window,
    world_frame,
)
from wd_cli.play.turns import Cancelled, CancelToken, ModelTurns

SETTINGS = DriveSettings(turn_yaw=0.05, start_speed=6.0, max_speed=12.0, acceleration=4.0)

# -- action timing: keys -> actions ---------------------------------------------------------------------------------


def test_turning_holds_while_the_key_is_down_and_speed_integrates_the_hold() -> None:
    controls = Controls(SETTINGS, now=10.0)
    assert controls.action(10.0) == (0.0, 6.0)
    controls.press("left", 11.0)
    assert controls.action(11.5) == (0.05, 6.0)
    controls.press("right", 12.0)  # both: no turn
    assert controls.action(12.0)[0] == 0.0
    controls.release("left", 12.5)
    assert controls.action(12.5)[0] == -0.05
    controls.release("right", 13.0)
    controls.press("up", 13.0)
    assert controls.action(13.5) == (0.0, pytest.approx(8.0))  # 0.5 s at 4 m/s^2
    controls.release("up", 14.0)
    assert controls.action(20.0)[1] == pytest.approx(10.0)  # the speed stays after release
    controls.press("up", 20.0)
    assert controls.action(30.0)[1] == 12.0  # clamped at max_speed
    controls.release("up", 30.0)
    controls.press("down", 30.0)
    assert controls.action(31.0)[1] == pytest.approx(8.0)  # down from the clamp, not from 12 + 40
    controls.release_all(40.0)
    assert controls.action(50.0) == (0.0, 0.0)  # 10 s of braking stopped at zero, then all keys up
    with pytest.raises(ValueError, match="unknown key"):
        controls.press("space", 50.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.booleans(), st.floats(0.0, 2.0)), max_size=30))
def test_speed_follows_the_held_keys_step_by_step_within_its_range(events) -> None:
    """Against a fine-stepped simulation of the same key presses."""
    controls = Controls(SETTINGS, now=0.0)
    held, speed, now, dt = set(), SETTINGS.start_speed, 0.0, 1e-3
    for key, down, wait in events:
        for _ in range(round(wait / dt)):
            rate = SETTINGS.acceleration * (("up" in held) - ("down" in held))
            speed = min(SETTINGS.max_speed, max(0.0, speed + rate * dt))
        now += round(wait / dt) * dt
        (controls.press if down else controls.release)(key, now)
        (held.add if down else held.discard)(key)
        yaw, measured = controls.action(now)
        assert 0.0 <= measured <= SETTINGS.max_speed
        assert measured == pytest.approx(speed, abs=1e-6)
        assert yaw == SETTINGS.turn_yaw * (("left" in held) - ("right" in held))


# -- window scheduling -----------------------------------------------------------------------------------------------


def test_frames_per_window_keeps_up_with_playback_using_the_fewest_frames() -> None:
    assert frames_per_window(None, fps=8, most=6) == 6  # nothing measured yet
    assert frames_per_window(0.3, fps=8, most=6) == 3  # ceil(1.25 * 8 * 0.3)
    assert frames_per_window(0.01, fps=8, most=6) == 1
    assert frames_per_window(2.0, fps=8, most=6) == 6  # cannot keep up: as many as a window makes
    for seconds in np.linspace(0.01, 0.7, 50):
        frames = frames_per_window(float(seconds), fps=8, most=6)
        assert frames == 6 or frames / seconds >= HEADROOM * 8 - 1e-9  # keeps up with margin when it can...
        assert frames == 1 or (frames - 1) / seconds < HEADROOM * 8  # ...and one frame fewer would not
    with pytest.raises(ValueError):
        frames_per_window(0.1, fps=8, most=0)


def test_a_window_starts_when_the_waiting_frames_last_no_longer_than_a_window_takes() -> None:
    assert should_start_window(buffered_frames=10, fps=8, window_seconds=None)
    assert should_start_window(buffered_frames=2, fps=8, window_seconds=0.3)  # 0.25 s left to show
    assert not should_start_window(buffered_frames=3, fps=8, window_seconds=0.3)  # 0.375 s left


class SpyPipeline:
    """What DriveSession needs of a pipeline, recording every window it samples. A frame's tokens are its index in
    the drive (frames are generated left to right, each once), so a window's tokens say which frames it holds."""

    def __init__(self, num_frames: int = 4, context_frames: int = 2, steps: int = 3):
        self.defaults = PipelineDefaults(num_frames=num_frames, context_frames=context_frames, steps=steps,
                                         height=8, width=8)
        self.stpt = SimpleNamespace(config=SimpleNamespace(action_dim=2))
        self.windows: list[tuple[list[int], list[bool], torch.Tensor]] = []  # (frames, context, actions)
        self.steps_run, self._next_frame = 0, 1

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        return torch.zeros(1, 2, 2, dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        return np.broadcast_to(tokens[:, :1, :1, None].numpy().astype(np.uint8), (len(tokens), 8, 8, 3)).copy()

    def window_sampler(self, prompt: str = "", seed: int = 0, callback=None, steps: int | None = None):
        def sample(tokens: torch.Tensor, known: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
            for step in range(steps or self.defaults.steps):
                self.steps_run += 1
                callback(step, tokens)
            context = known[0].flatten(1).all(dim=1).tolist()
            filled = tokens.clone()
            for frame, final in enumerate(context):
                if not final:
                    filled[0, frame], self._next_frame = self._next_frame, self._next_frame + 1
            self.windows.append((filled[0, :, 0, 0].tolist(), context, actions.clone()))
            return filled

        return sample


def _sink(emitted: list) -> FrameSink:
    return lambda index, frame, action: emitted.append((index, int(frame[0, 0, 0]), action))


def test_each_window_reads_the_actions_held_when_it_was_scheduled_for_every_move_into_its_frames() -> None:
    spy = SpyPipeline(num_frames=4, context_frames=2)
    session = DriveSession(spy, np.zeros((8, 8, 3), np.uint8))
    emitted = []
    sink = _sink(emitted)
    left, right, straight = (0.0625, 6.0), (-0.0625, 7.0), (0.0, 8.0)  # float32 holds them exactly
    session.advance(2, left, sink)
    session.advance(2, right, sink)
    session.advance(1, straight, sink)  # one new frame: the window leads with three final ones
    # Where the windows went: the model's 4 frames whenever the drive has them, leading with the final frames.
    assert [frames for frames, _, _ in spy.windows] == [[0, 1, 2], [1, 2, 3, 4], [2, 3, 4, 5]]
    assert [context for _, context, _ in spy.windows] == [
        [True, False, False], [True, True, False, False], [True, True, True, False]]
    # Rows new - 1 .. end - 2 are the moves into the new frames: the action held at scheduling time.
    first, second, third = (actions.tolist() for _, _, actions in spy.windows)
    assert first[:2] == [list(left)] * 2
    assert second[1:3] == [list(right)] * 2  # frames 1..4: row 2 (the move out of frame 2) was decided late
    assert third[2] == list(straight)
    assert [(index, shown) for index, shown, _ in emitted] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert [action for _, _, action in emitted] == [left, left, right, right, straight]
    assert session.length == 6
    # The CSV's row i conditions frame i: the move out of it, the last one still the held action.
    rows = session.actions(6)
    assert [tuple(row) for row in rows.tolist()] == [left, left, right, right, straight, straight]
    assert np.array_equal(parse_actions(actions_csv(rows)), rows)
    with pytest.raises(ValueError, match="frames must be in"):
        session.advance(3, left, sink)  # a window of 4 keeps at least the pipeline's 2 context frames


def test_cancelling_between_steps_stops_the_window_and_the_drive() -> None:
    spy = SpyPipeline(steps=5)
    session = DriveSession(spy, np.zeros((8, 8, 3), np.uint8))
    token = CancelToken()

    def between_steps() -> None:
        if spy.steps_run == 2:
            token.cancel()
        token.check()

    with pytest.raises(Cancelled):
        session.advance(2, (0.0, 6.0), lambda *frame: None, between_steps)
    assert spy.steps_run == 2  # stopped at the next step, not at the end of the window
    with pytest.raises(RuntimeError, match="did not finish"):
        session.advance(2, (0.0, 6.0), lambda *frame: None)


def test_a_session_on_the_real_pipeline_emits_the_decoded_frames(tiny_pipeline) -> None:
    first = world_frame(tiny_pipeline, seed=3)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    session = DriveSession(tiny_pipeline, first, seed=0)
    frames = {}
    session.advance(2, (0.05, 6.0), lambda index, frame, action: frames.update({index: frame}))
    assert sorted(frames) == [1, 2] and session.length == 3
    tokens = session._video.tokens
    assert np.array_equal(np.stack([frames[1], frames[2]]), tiny_pipeline.decode(tokens[1:3]))
    assert np.array_equal(session.first_frame(), tiny_pipeline.decode(tiny_pipeline.encode(first))[0])


def test_driving_needs_yaw_and_speed_actions(make_tiny_pipeline) -> None:
    pipeline = make_tiny_pipeline()
    pipeline.stpt.config = SimpleNamespace(action_dim=3)
    with pytest.raises(ValueError, match="action_dim=3"):
        DriveSession(pipeline, np.zeros((32, 32, 3), np.uint8))


# -- the model's turns -------------------------------------------------------------------------------------------


def test_turns_run_one_at_a_time_in_arrival_order_and_hand_over_between_steps() -> None:
    turns, log, inside = ModelTurns(), [], threading.Semaphore(1)

    def long_task() -> None:
        with turns.turn(CancelToken()) as turn:
            started.set()
            for step in range(3):
                assert inside.acquire(blocking=False)  # nobody else computes meanwhile
                log.append(f"task{step}")
                time.sleep(0.05)
                inside.release()
                turn.between_steps()

    def window(name: str) -> None:
        with turns.turn(CancelToken()):
            assert inside.acquire(blocking=False)
            log.append(name)
            inside.release()

    started = threading.Event()
    threads = [threading.Thread(target=long_task)]
    threads[0].start()
    started.wait()
    for name in ("a", "b"):
        threads.append(threading.Thread(target=window, args=(name,)))
        threads[-1].start()
        while turns.queued < len(threads):
            time.sleep(0.001)
    for thread in threads:
        thread.join(5)
    # The task's first step, then the waiting windows, first come first served, before its next step.
    assert log == ["task0", "a", "b", "task1", "task2"]
    assert turns.queued == 0


def test_work_cancelled_while_it_waits_leaves_the_queue() -> None:
    turns, token, outcome = ModelTurns(), CancelToken(), []

    def waiter() -> None:
        try:
            with turns.turn(token):
                outcome.append("ran")
        except Cancelled:
            outcome.append("cancelled")

    with turns.turn(CancelToken()):
        thread = threading.Thread(target=waiter)
        thread.start()
        while turns.queued < 2:
            time.sleep(0.001)
        token.cancel()
        thread.join(5)
        assert outcome == ["cancelled"] and turns.queued == 1
    with turns.turn(CancelToken()):  # the queue is free again
        pass


def test_drive_windows_are_those_of_windowing_for_a_rollout_appended_a_few_frames_at_a_time() -> None:
    spy = SpyPipeline(num_frames=8, context_frames=2)
    session = DriveSession(spy, np.zeros((8, 8, 3), np.uint8))
    for frames in (6, 6, 3, 1):
        session.advance(frames, (0.0, 6.0), lambda *frame: None)
    # next_window: `context` final frames lead, and a window reaches back to stay the model's 8 frames long.
    assert [frames for frames, _, _ in spy.windows] == [list(range(0, 7)), list(range(5, 13)), list(range(8, 16)),
                                                         list(range(9, 17))]
