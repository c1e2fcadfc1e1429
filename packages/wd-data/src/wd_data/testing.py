"""Tiny datasets in the real on-disk formats, for tests, examples and benchmarks: a nuScenes dataroot the
devkit loads (its 13 tables, a map, JPEG frames), and tar shards as img2dataset writes them."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# The mini nuScenes dataroot: a car driving at SPEED along HEADING, turning at YAW_RATE from FIRST_YAW.
VERSION = "v1.0-mini"
SPEED, HEADING, YAW_RATE, FIRST_YAW = 5.0, 0.3, 0.6, 3.0  # m/s, rad, rad/s, rad (crosses +pi after 0.24 s)
SCENE_FRAMES = {"scene-0001": 25, "scene-0002": 13}  # 12 Hz camera frames per scene
TIME_ORIGIN = 1_532_402_927_000_000


def grey(index: int) -> int:
    """Grey level of CAM_FRONT frame `index` (frames are flat, so reading a level back gives the index)."""
    return 10 + 8 * index


def camera_time(index: int) -> int:
    """Microseconds of camera frame `index`: 12 Hz with a deterministic jitter, as real cameras have."""
    return TIME_ORIGIN + round(index * 1e6 / 12) + (index * 7919) % 3000


def write_table(root: Path, name: str, rows: list[dict]) -> None:
    (root / VERSION / f"{name}.json").write_text(json.dumps(rows))


def write_nuscenes_dataroot(root: str | Path, scene_frames: dict[str, int] | None = None) -> Path:
    """A nuScenes dataroot of `scene_frames` (default SCENE_FRAMES) CAM_FRONT sweeps (keyframes every 6th) and
    CAM_BACK keyframes, 48x32 JPEGs, ego poses of the motion above, and `captions.json` for the first scene.
    Name the scenes after those of a devkit split (e.g. mini_train's scene-0061) to read them by that split."""
    root = Path(root)
    scene_frames = scene_frames or SCENE_FRAMES
    (root / VERSION).mkdir(parents=True)
    (root / "maps").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "maps" / "map0.png")
    for table in ("category", "attribute", "visibility", "instance", "sample_annotation"):
        write_table(root, table, [])
    write_table(
        root,
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
        root,
        "map",
        [{"token": "map0", "category": "semantic_prior", "filename": "maps/map0.png", "log_tokens": ["log0"]}],
    )
    write_table(
        root,
        "sensor",
        [{"token": f"sensor_{c}", "channel": c, "modality": "camera"} for c in ("CAM_FRONT", "CAM_BACK")],
    )
    write_table(
        root,
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
    for scene_name, num_frames in scene_frames.items():
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
        for position, (k, token) in enumerate(zip(keyframes, sample_tokens, strict=True)):
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
            for position, (i, token) in enumerate(zip(indices, tokens, strict=True)):
                seconds = (camera_time(i) - TIME_ORIGIN) / 1e6
                yaw = FIRST_YAW + YAW_RATE * seconds
                poses.append(
                    {
                        "token": f"pose_{token}",
                        "timestamp": camera_time(i),
                        "rotation": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)],  # about z, (w, x, y, z)
                        "translation": [SPEED * seconds * math.cos(HEADING), SPEED * seconds * math.sin(HEADING), 0.0],
                    }
                )
                folder = "samples" if i % 6 == 0 else "sweeps"
                filename = f"{folder}/{channel}/{token}.jpg"
                (root / folder / channel).mkdir(parents=True, exist_ok=True)
                level = grey(i) if channel == "CAM_FRONT" else 255
                Image.fromarray(np.full((32, 48, 3), level, np.uint8)).save(root / filename, quality=95)
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
    write_table(root, "scene", scenes)
    write_table(root, "sample", samples)
    write_table(root, "sample_data", sample_data)
    write_table(root, "ego_pose", poses)
    (root / "captions.json").write_text(json.dumps({next(iter(scene_frames)): "a road by the sea"}))
    return root


def jpeg_bytes(level: int, height: int = 20, width: int = 30) -> bytes:
    """A flat grey JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), level, np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tar(path: str | Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of (name, bytes) members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Path(path)


def image_record(key: str, level: int, kind: str = "good") -> list[tuple[str, bytes]]:
    """img2dataset's members for one image: key.jpg, key.txt ("caption LEVEL") and key.json ("json LEVEL");
    `kind` spoils one: corrupt_image, not_utf8, malformed_json, no_caption, or json_caption_only (no .txt)."""
    meta = {"key": key, "caption": f"json {level}", "url": f"http://x/{key}.jpg", "status": "success"}
    members = [(f"{key}.jpg", b"garbage" if kind == "corrupt_image" else jpeg_bytes(level))]
    if kind == "not_utf8":
        members.append((f"{key}.txt", b"caf\xe9"))
    elif kind == "malformed_json":
        members.append((f"{key}.json", b"{not json"))
        return members
    elif kind != "json_caption_only":
        members.append((f"{key}.txt", f"caption {level}".encode()))
    if kind == "no_caption":
        return members[:1]
    members.append((f"{key}.json", json.dumps(meta).encode()))
    return members
