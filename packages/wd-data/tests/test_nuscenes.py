"""A tiny nuScenes dataroot (the devkit's 13 tables, a map, JPEG frames) loaded with the real devkit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes")
from wd_data.datasets.nuscenes import NuScenesConfig, NuScenesDataset  # noqa: E402
from wd_data.testing import (  # noqa: E402
    SPEED,
    TIME_ORIGIN,
    VERSION,
    YAW_RATE,
    camera_time,
    write_nuscenes_dataroot,
)


@pytest.fixture
def dataroot(tmp_path):
    return write_nuscenes_dataroot(tmp_path)


def config(dataroot, **overrides):
    fields = {
        "version": VERSION,
        "split": None,
        "num_frames": 2,
        "size": (16, 24),
        "captions": dataroot / "captions.json",
    }
    return NuScenesConfig(dataroot, **{**fields, **overrides})


def levels_to_indices(frames: torch.Tensor) -> list[int]:
    return [round((level - 10) / 8) for level in frames.double().mean(dim=(1, 2, 3)).tolist()]


def expected_ego_actions(first: int, second: int) -> tuple[float, float]:
    """(yaw change, speed) from camera frame `first` to `second`, by hand from the generating motion."""
    seconds = (camera_time(second) - camera_time(first)) / 1e6
    return YAW_RATE * seconds, SPEED  # positions move at SPEED exactly; yaw at YAW_RATE (wrap ignored)


def test_front_camera_clips_every_6th_frame_with_ego_pose_actions(dataroot):
    dataset = NuScenesDataset(config(dataroot))
    # scene-0001: frames 0 6 12 18 24 -> clips (0, 6), (12, 18); scene-0002: frames 0 6 12 -> clip (0, 6).
    assert len(dataset) == 3
    expected_frames = [[0, 6], [12, 18], [0, 6]]
    next_frame = [[6, 12], [18, 24], [6, 12]]
    for index in range(3):
        sample = dataset[index]
        assert sample["frames"].shape == (2, 16, 24, 3) and sample["frames"].dtype == torch.uint8
        assert levels_to_indices(sample["frames"]) == expected_frames[index]
        assert sample["actions"].dtype == torch.float32 and sample["actions"].shape == (2, 2)
        expected = [expected_ego_actions(a, b) for a, b in zip(expected_frames[index], next_frame[index])]
        np.testing.assert_allclose(sample["actions"].numpy(), np.array(expected), rtol=1e-5, atol=1e-5)
        assert sample["is_image"] is False and sample["meta"]["action_source"] == "ego_pose"
    assert dataset[0]["caption"] == "a road by the sea" and dataset[2]["caption"] == ""
    assert dataset[0]["meta"]["scene"] == "scene-0001"


def test_last_frame_of_a_scene_repeats_the_previous_action(dataroot):
    dataset = NuScenesDataset(config(dataroot, num_frames=3, clip_stride=1))
    last_clip = [clip for clip in dataset.clips if clip["scene"] == "scene-0001"][-1]  # frames 12 18 24
    np.testing.assert_allclose(last_clip["actions"][2], last_clip["actions"][1])


def test_can_bus_actions_when_the_expansion_is_present(dataroot):
    (dataroot / "can_bus").mkdir()
    utimes = np.arange(TIME_ORIGIN - 100_000, camera_time(24) + 100_000, 20_000)  # 50 Hz
    messages = []
    for utime in utimes:
        seconds = (utime - TIME_ORIGIN) / 1e6
        speed = 4.0 + seconds  # linear in time, so the trapezoid mean is exact
        messages.append(
            {
                "utime": int(utime),
                "vel": [speed * 0.6, speed * 0.8, 0.0],
                "rotation_rate": [0.0, 0.0, 0.5],
                "pos": [0.0, 0.0, 0.0],
                "orientation": [1.0, 0.0, 0.0, 0.0],
                "accel": [0.0, 0.0, 9.8],
            }
        )
    (dataroot / "can_bus" / "scene-0001_pose.json").write_text(json.dumps(messages))
    dataset = NuScenesDataset(config(dataroot))
    sample = dataset[1]  # scene-0001 frames 12, 18
    assert sample["meta"]["action_source"] == "can_bus"
    expected = []
    for first, second in [(12, 18), (18, 24)]:
        start, end = (camera_time(first) - TIME_ORIGIN) / 1e6, (camera_time(second) - TIME_ORIGIN) / 1e6
        expected.append((0.5 * (end - start), 4.0 + (start + end) / 2))
    np.testing.assert_allclose(sample["actions"].numpy(), np.array(expected), rtol=1e-5)
    assert dataset[2]["meta"]["action_source"] == "ego_pose"  # scene-0002 has no CAN data: falls back


def test_corrupt_frame_skips_the_clip(dataroot):
    (dataroot / "samples" / "CAM_FRONT" / "scene-0002_CAM_FRONT_6.jpg").write_bytes(b"broken")
    dataset = NuScenesDataset(config(dataroot))
    sample = dataset[2]
    assert sample["meta"]["scene"] == "scene-0001" and sample["meta"]["num_skipped"] == 1
    assert dataset.num_skipped == 1


def test_unknown_split_and_camera_are_rejected(dataroot):
    with pytest.raises(ValueError, match="split"):
        NuScenesDataset(NuScenesConfig(dataroot, version=VERSION, split="nope"))
    with pytest.raises(ValueError, match="CAM_LEFT"):
        NuScenesDataset(config(dataroot, camera="CAM_LEFT"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"num_frames": 0}, "num_frames"), ({"frame_interval": 0}, "frame_interval"), ({"clip_stride": 0}, "clip_stride")],
)
def test_bad_counts_are_rejected(dataroot, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(dataroot, **overrides)


def test_no_clip_long_enough_is_a_clear_error(dataroot):
    with pytest.raises(ValueError, match="no scene of split None has 6 CAM_FRONT frames"):
        NuScenesDataset(config(dataroot, num_frames=6))
