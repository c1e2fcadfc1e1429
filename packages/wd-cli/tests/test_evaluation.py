"""Quality numbers: the detectors' helpers on true clips, an oracle that must beat every baseline, a copying
model that must tie the copy baseline, the tiny pipeline end to end, and `wd eval`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from wd_data.synthetic import BACKGROUND, PALETTE, DriveWorld, ShapesWorld, colour_mask, eval_seeds

from wd_cli.evaluation import (
    EvalConfig,
    Metric,
    _dominant_shape,
    action_to_video_metrics,
    aligned_iou,
    blend_keyframes,
    bootstrap_interval,
    inpaint_metrics,
    stylize_metrics,
    evaluate_pipeline,
    format_metrics,
    image_to_video_metrics,
    interpolation_metrics,
    long_rollout_metrics,
    measured_yaw,
    outpainting_metrics,
    prediction_metrics,
    rollout_actions,
    synthetic_worlds,
    text_and_actions_metrics,
    text_to_video_metrics,
)
from wd_cli.main import cli
from wd_cli.pipeline import Generation, PipelineDefaults
from wd_cli.windowing import plan_windows

SHAPES, DRIVE = synthetic_worlds(32, 32, 6)
CONFIG = EvalConfig(SHAPES, DRIVE, clips=3)


def _generation(frames: np.ndarray) -> Generation:
    grid = np.zeros((len(frames), 8, 8), dtype=bool)
    return Generation(frames, grid.astype(np.int64), grid)


class OracleOrCopy:
    """Stands in for a pipeline: returns the world's true clip for the request (oracle) or the first frame
    repeated (copy). Only the task methods the evaluation calls exist."""

    def __init__(self, copy: bool) -> None:
        self.copy = copy
        shapes, drive = ShapesWorld(SHAPES), DriveWorld(DRIVE)
        self.by_caption = {shapes.render(seed).caption: shapes.render(seed) for seed in eval_seeds(CONFIG.clips)}
        self.drive_seeds = {drive.render(seed).frames[0].tobytes(): seed for seed in eval_seeds(CONFIG.clips)}
        long = ShapesWorld(dataclasses.replace(SHAPES, num_frames=2 * CONFIG.keyframe_every + 1))
        self.interpolation_seeds = {long.render(seed).frames[0].tobytes(): seed for seed in eval_seeds(CONFIG.clips)}

    def _answer(self, frames: np.ndarray) -> Generation:
        return _generation(np.repeat(frames[:1], len(frames), axis=0) if self.copy else frames)

    def image_to_video(self, image, prompt=None, **options) -> Generation:
        return self._answer(self.by_caption[prompt].frames)

    def action_to_video(self, image, actions, prompt=None, **options) -> Generation:
        return self._answer(self._drive(self.drive_seeds[image.tobytes()], actions))

    def _drive(self, seed: int, actions: np.ndarray) -> np.ndarray:
        world = DriveWorld(dataclasses.replace(DRIVE, num_frames=len(actions)))
        return world.render(seed, actions=actions).frames

    def text_to_video(self, prompt, actions=None, **options) -> Generation:
        if actions is not None:  # the evaluation's generation seed is the clip's index
            return self._answer(self._drive(eval_seeds(CONFIG.clips)[options["seed"]], actions))
        return self._answer(self.by_caption[prompt].frames)

    def interpolate(self, keyframes, every, prompt="", **options) -> Generation:
        clip = ShapesWorld(dataclasses.replace(SHAPES, num_frames=len(keyframes) * every - every + 1))
        return self._answer(clip.render(self.interpolation_seeds[keyframes[0].tobytes()]).frames)

    def outpaint(self, video, border=None, prompt="", **options) -> Generation:
        return self._answer(self.by_caption[prompt].frames)

    def inpaint(self, video, box=None, prompt="", **options) -> Generation:
        return _generation(video)  # the oracle and the copy both give back the true clip

    def stylize(self, video, prompt, **options) -> Generation:
        if self.copy:
            return _generation(video)
        clip = next(clip for clip in self.by_caption.values() if np.array_equal(clip.frames, video))
        source, target = clip.state["colours"][0], next(word for word in prompt.split() if word in PALETTE)
        painted = video.copy()
        painted[np.stack([colour_mask(frame, source) for frame in video])] = PALETTE[target]
        return _generation(painted)


def test_metric_direction() -> None:
    assert Metric("psnr", 20.0, 18.0, "copy", "higher").beats_baseline
    assert not Metric("error", 3.0, 3.0, "copy", "lower").beats_baseline
    assert Metric("error", 2.0, 3.0, "copy", "lower").beats_baseline
    # With an interval, only a win that the whole interval shows counts.
    assert not Metric("psnr", 20.0, 18.0, "copy", "higher", interval=(17.5, 22.0)).beats_baseline
    assert Metric("psnr", 20.0, 18.0, "copy", "higher", interval=(18.5, 22.0)).beats_baseline
    assert not Metric("error", 2.0, 3.0, "copy", "lower", interval=(1.0, 3.2)).beats_baseline


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=40), st.integers(0, 2**31))
def test_bootstrap_interval_holds_the_statistic_within_the_values(values: list[float], seed: int) -> None:
    low, high = bootstrap_interval(values, seed=seed, resamples=200)
    assert min(values) - 1e-9 <= low <= high <= max(values) + 1e-9


def test_bootstrap_interval_narrows_with_more_clips() -> None:
    hits = lambda n: [1.0, 0.0] * (n // 2)  # noqa: E731 (a rate of 0.5 over n clips)
    widths = [np.subtract(*bootstrap_interval(hits(n))[::-1]) for n in (8, 32, 128)]
    assert widths[0] > widths[1] > widths[2] > 0
    assert bootstrap_interval(hits(128))[0] == pytest.approx(0.5 - 1.96 * 0.5 / np.sqrt(128), abs=0.03)
    assert bootstrap_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)


def _drawn(kind: str, colour: str) -> np.ndarray:
    """A 32x32 frame of the shapes world's background with one shape: an 8x8 square or a disc of radius 5."""
    frame = np.full((32, 32, 3), BACKGROUND, dtype=np.uint8)
    rows, cols = np.indices((32, 32))
    if kind == "square":
        inside = (abs(rows - 15.5) < 4) & (abs(cols - 15.5) < 4)
    else:
        inside = np.hypot(rows - 16, cols - 16) <= 5
    frame[inside] = PALETTE[colour]
    return frame


@pytest.mark.parametrize("first", ["square", "circle"])
def test_a_kind_tie_goes_to_the_kind_seen_first(first: str) -> None:
    """Two frames of each kind: the first one seen wins, whatever the process's string hashes (a tie broken by
    set order moved one clip's text2video score between runs of the same pipeline)."""
    second = "circle" if first == "square" else "square"
    frames = np.stack([_drawn(first, "red")] * 2 + [_drawn(second, "red")] * 2)
    assert _dominant_shape(frames) == ("red", first)
    assert _dominant_shape(frames[1:]) == ("red", second)  # one of the first kind, two of the second


def test_aligned_iou_measures_form_not_place() -> None:
    square = np.zeros((32, 32), dtype=bool)
    square[4:12, 4:12] = True
    moved = np.roll(square, (15, 9), axis=(0, 1))
    assert aligned_iou(moved, square) == 1.0
    half = square.copy()
    half[8:12] = False  # the bottom half melted away
    assert aligned_iou(half, square) == pytest.approx(0.5)
    assert aligned_iou(np.zeros_like(square), square) == 0.0


@pytest.mark.parametrize("seed", eval_seeds(4))
def test_measured_yaw_follows_the_turn(seed: int) -> None:
    world = DriveWorld(DRIVE)
    for sign in (1.0, -1.0):
        actions = np.tile(np.float32([[sign * 0.1, 6.0]]), (DRIVE.num_frames, 1))
        clip = world.render(seed, actions=actions)
        true_turn = clip.state["heading"][-1] - clip.state["heading"][0]
        assert measured_yaw(clip.frames, DRIVE) == pytest.approx(true_turn, abs=0.15)


def test_measured_yaw_keeps_the_turn_of_a_view_that_lost_the_road() -> None:
    clip = DriveWorld(DRIVE).render(eval_seeds(1)[0], actions=np.tile(np.float32([[0.1, 6.0]]), (DRIVE.num_frames, 1)))
    grass = clip.frames.copy()
    grass[:, int(DRIVE.horizon_row) :] = (70, 135, 55)
    lost = np.concatenate([clip.frames[:3], grass[3:]])  # the road is gone after frame 3
    assert measured_yaw(lost, DRIVE) == pytest.approx(measured_yaw(clip.frames[:3], DRIVE))
    assert measured_yaw(lost, DRIVE) > 0.1
    assert np.isnan(measured_yaw(grass, DRIVE))  # no road in the first frame: nothing to measure against


def test_the_oracle_beats_every_baseline_and_copying_ties_it() -> None:
    oracle, copy = OracleOrCopy(copy=False), OracleOrCopy(copy=True)
    psnr, error, iou = image_to_video_metrics(oracle, CONFIG, progress=False)
    assert psnr.value == float("inf") and psnr.interval == (float("inf"), float("inf")) and error.beats_baseline
    assert error.value == pytest.approx(error.on_truth)  # the oracle's frames are the true ones
    assert iou.value == pytest.approx(iou.on_truth) and 0.85 < iou.value <= 1
    copied_psnr, copied_error, copied_iou = image_to_video_metrics(copy, CONFIG, progress=False)
    assert copied_psnr.value == pytest.approx(copied_psnr.baseline)
    assert copied_error.value == pytest.approx(copied_error.baseline) and not copied_error.beats_baseline
    assert copied_iou.value == 1.0  # a frozen shape keeps its form exactly

    inpaint_psnr, inpaint_error, inpaint_iou = inpaint_metrics(oracle, CONFIG, progress=False)
    assert inpaint_psnr.value == float("inf") and inpaint_psnr.beats_baseline
    assert inpaint_error.value == pytest.approx(inpaint_error.on_truth)
    assert inpaint_error.value < inpaint_error.baseline  # painting the box over loses the shape inside it
    assert inpaint_iou.value == pytest.approx(inpaint_iou.on_truth)
    (restyled,), (unchanged,) = stylize_metrics(oracle, CONFIG, progress=False), stylize_metrics(copy, CONFIG,
                                                                                                  progress=False)
    assert restyled.value == 1.0 and restyled.beats_baseline and unchanged.value == 0.0

    turns, left, right = action_to_video_metrics(oracle, CONFIG, progress=False)
    # The oracle's views are the world's renders, so it scores the detector's ceiling.
    assert turns.value == turns.on_truth > turns.baseline and left.value > 0 > right.value
    still, _, _ = action_to_video_metrics(copy, CONFIG, progress=False)
    assert still.value == 0.0  # a frozen view turns neither way

    colour, both = text_to_video_metrics(oracle, CONFIG, progress=False)
    assert colour.value == colour.on_truth == 1.0 and both.value == both.on_truth > both.baseline


@pytest.mark.parametrize("measure", [prediction_metrics, interpolation_metrics, outpainting_metrics])
def test_the_oracle_beats_the_baselines_of_the_shapes_tasks(measure) -> None:
    psnr, error = measure(OracleOrCopy(copy=False), CONFIG, progress=False)
    assert psnr.value == float("inf") and psnr.beats_baseline
    assert error.value == pytest.approx(error.on_truth) and error.beats_baseline


def test_the_oracle_turns_with_text_and_actions_and_a_frozen_view_does_not() -> None:
    turns, left, right = text_and_actions_metrics(OracleOrCopy(copy=False), CONFIG, progress=False)
    assert turns.value == turns.on_truth > turns.baseline and left.value > 0 > right.value
    still, _, _ = text_and_actions_metrics(OracleOrCopy(copy=True), CONFIG, progress=False)
    assert still.value == 0.0


class LongRolloutPipeline(OracleOrCopy):
    """The oracle with the window the long rollouts are planned for."""

    defaults = PipelineDefaults(num_frames=6, context_frames=2, height=32, width=32)


def test_long_rollouts_are_scored_per_segment_and_the_oracle_follows_every_turn() -> None:
    rows = long_rollout_metrics(LongRolloutPipeline(copy=False), CONFIG, progress=False)
    # 18 frames in windows of 6 from 2: segments of new frames 1-5, 6-9, 10-13, 14-17.
    assert [row.name.split("segment ")[-1] for row in rows] == [f"{k} of 4 (rate)" for k in (1, 2, 3, 4)]
    assert all(row.value == row.on_truth > row.baseline for row in rows)
    assert all(row.value == 0.0 for row in long_rollout_metrics(LongRolloutPipeline(copy=True), CONFIG, False))


def test_rollout_actions_turn_the_other_way_in_every_window() -> None:
    windows = plan_windows([True] + [False] * 17, 6, 2)
    actions = rollout_actions(CONFIG, windows, 1.0, 18)
    yaw = CONFIG.rollout_yaw
    assert actions[:5, 0].tolist() == pytest.approx([yaw] * 5)  # moves into frames 1..5
    assert actions[5:9, 0].tolist() == pytest.approx([-yaw] * 4)
    assert actions[13:, 0].tolist() == pytest.approx([-yaw] * 5)  # the last window's, and the row after it
    assert (actions[:, 1] == CONFIG.turn_speed).all()


def test_blend_keyframes_is_linear_between_keyframes() -> None:
    keyframes = np.array([0, 200, 100], dtype=np.uint8)[:, None, None, None].repeat(3, axis=3)
    blended = blend_keyframes(keyframes, every=4)
    assert blended[:, 0, 0, 0].tolist() == [0, 50, 100, 150, 200, 175, 150, 125, 100]


def test_tiny_pipeline_end_to_end(tiny_pipeline) -> None:
    shapes, drive = synthetic_worlds(32, 32, tiny_pipeline.defaults.num_frames)
    config = EvalConfig(shapes, drive, clips=1, steps=2, given_frames=2, keyframe_every=2, rollout_windows=2)
    metrics = evaluate_pipeline(tiny_pipeline, config, progress=False)
    names = [metric.name for metric in metrics]
    # Tokenizer 2, image2video 3, inpaint 3, stylize 1, action2video 3, text2video 2, predict 2, interpolate 2,
    # outpaint 2, text+actions 3, long rollout: 8 frames in windows of 4 from 2 are 3 windows.
    assert len(names) == 2 + 3 + 3 + 1 + 3 + 2 + 2 + 2 + 2 + 3 + 3 and names[0].startswith("tokenizer PSNR")
    assert all(np.isfinite(metric.baseline) for metric in metrics)
    table = format_metrics(metrics)
    assert all(name in table for name in names) and "beats it" in table.splitlines()[0]


def test_eval_command_writes_json(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    args = ["eval", "--checkpoint", str(tiny_pipeline_dir), "--clips", "1", "--task", "image2video",
            "--set", "steps=2", "--json-out", str(out), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [row["name"] for row in rows][2:] == ["image2video PSNR, frames 2..N (dB)",
                                                 "image2video position error, frames 2..N (px)",
                                                 "image2video shape IoU with frame 1, frames 2..N"]
    assert all(len(row["interval"]) == 2 for row in rows[2:])
    assert "image2video position error" in result.output


@pytest.mark.parametrize("args, message", [
    (["--set", "shapes.colour=red"], "shapes.colour"),
    (["--set", "task_clips.painting=2"], "task_clips must map tasks of"),
    (["--set", "given_frames=6"], "given_frames 6 leaves no frame of 4 to predict"),
    (["--set", "clips"], "expected key.sub=value"),
    (["--checkpoint-typo"], "No such option"),
])
def test_eval_command_errors_are_one_line(tiny_pipeline_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", str(tiny_pipeline_dir), *args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_eval_command_missing_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1
