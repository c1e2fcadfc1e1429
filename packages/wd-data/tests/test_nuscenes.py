"""A tiny nuScenes dataroot (the devkit's 13 tables, a map, JPEG frames) loaded with the real devkit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nuscenes")
from pyquaternion import Quaternion  # noqa: E402  (installed with nuscenes-devkit)

from wd_data.datasets.nuscenes import NuScenesConfig, NuScenesDataset  # noqa: E402

VERSION = "v1.0-mini"
SPEED, HEADING, YAW_RATE, FIRST_YAW = 5.0, 0.3, 0.6, 3.0  # m/s, rad, rad/s, rad (crosses +pi after 0.24 s)
SCENE_FRAMES = {"scene-0001": 25, "scene-0002": 13}  # 12 Hz camera frames per scene
TIME_ORIGIN = 1_532_402_927_000_000


def grey(index: int) -> int:
    return 10 + 8 * index


def camera_time(index: int) -> int:
    """Microseconds of camera frame `index`: 12 Hz with a deterministic jitter, as real cameras have."""
    return TIME_ORIGIN + round(index * 1e6 / 12) + (index * 7919) % 3000


def write_table(root, name, rows):
    (root / VERSION / f"{name}.json").write_text(json.dumps(rows))


@pytest.fixture
def dataroot(tmp_path):
    (tmp_path / VERSION).mkdir()
    (tmp_path / "maps").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "maps" / "map0.png")
    for table in ("category", "attribute", "visibility", "instance", "sample_annotation"):
        write_table(tmp_path, table, [])
    write_table(
        tmp_path,
        "log",
        [
            {
                "token": "log0",
                "logfile": "log0",
                "vehicle": "n015",
                "date_captured": "2018-07-24",
                "location": "singapore-onenorth",
            }
        ],
    )
    write_table(
        tmp_path,
        "map",
        [{"token": "map0", "category": "semantic_prior", "filename": "maps/map0.png", "log_tokens": ["log0"]}],
    )
    write_table(
        tmp_path,
        "sensor",
        [{"token": f"sensor_{c}", "channel": c, "modality": "camera"} for c in ("CAM_FRONT", "CAM_BACK")],
    )
    write_table(
        tmp_path,
        "calibrated_sensor",
        [
            {
                "token": f"calib_{c}",
                "sensor_token": f"sensor_{c}",
                "translation": [1.7, 0.0, 1.5],
                "rotation": [0.5, -0.5, 0.5, -0.5],
                "camera_intrinsic": [[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]],
            }
            for c in ("CAM_FRONT", "CAM_BACK")
        ],
    )
    scenes, samples, sample_data, poses = [], [], [], []
    for scene_name, num_frames in SCENE_FRAMES.items():
        keyframes = list(range(0, num_frames, 6))  # samples are 2 Hz: every 6th camera frame
        sample_tokens = [f"{scene_name}_sample{k}" for k in keyframes]
        scenes.append(
            {
                "token": f"{scene_name}_token",
                "log_token": "log0",
                "nbr_samples": len(keyframes),
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
                "name": scene_name,
                "description": "",
            }
        )
        for position, (k, token) in enumerate(zip(keyframes, sample_tokens)):
            samples.append(
                {
                    "token": token,
                    "timestamp": camera_time(k),
                    "scene_token": f"{scene_name}_token",
                    "prev": sample_tokens[position - 1] if position else "",
                    "next": sample_tokens[position + 1] if position + 1 < len(keyframes) else "",
                }
            )
        for channel in ("CAM_FRONT", "CAM_BACK"):
            indices = range(num_frames) if channel == "CAM_FRONT" else keyframes  # the back camera: keyframes only
            tokens = [f"{scene_name}_{channel}_{i}" for i in indices]
            for position, (i, token) in enumerate(zip(indices, tokens)):
                seconds = (camera_time(i) - TIME_ORIGIN) / 1e6
                yaw = FIRST_YAW + YAW_RATE * seconds
                poses.append(
                    {
                        "token": f"pose_{token}",
                        "timestamp": camera_time(i),
                        "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw).elements),
                        "translation": [SPEED * seconds * math.cos(HEADING), SPEED * seconds * math.sin(HEADING), 0.0],
                    }
                )
                folder = "samples" if i % 6 == 0 else "sweeps"
                filename = f"{folder}/{channel}/{token}.jpg"
                (tmp_path / folder / channel).mkdir(parents=True, exist_ok=True)
                level = grey(i) if channel == "CAM_FRONT" else 255
                Image.fromarray(np.full((32, 48, 3), level, np.uint8)).save(tmp_path / filename, quality=95)
                sample_data.append(
                    {
                        "token": token,
                        "sample_token": f"{scene_name}_sample{i - i % 6}",
                        "ego_pose_token": f"pose_{token}",
                        "calibrated_sensor_token": f"calib_{channel}",
                        "timestamp": camera_time(i),
                        "fileformat": "jpg",
                        "is_key_frame": i % 6 == 0,
                        "height": 32,
                        "width": 48,
                        "filename": filename,
                        "prev": tokens[position - 1] if position else "",
                        "next": tokens[position + 1] if position + 1 < len(tokens) else "",
                    }
                )
    write_table(tmp_path, "scene", scenes)
    write_table(tmp_path, "sample", samples)
    write_table(tmp_path, "sample_data", sample_data)
    write_table(tmp_path, "ego_pose", poses)
    (tmp_path / "captions.json").write_text(json.dumps({"scene-0001": "a road by the sea"}))
    return tmp_path


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
