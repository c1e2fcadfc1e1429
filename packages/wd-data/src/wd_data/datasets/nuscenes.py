"""nuScenes front-camera clips with per-frame ego actions (yaw change rad, speed m/s), via nuscenes-devkit."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wd_data.datasets.base import SkippingDataset, check_counts, sample_generator
from wd_data.image_io import read_image
from wd_data.transforms import Crop

logger = logging.getLogger(__name__)

_EXTRA_HINT = "the nuScenes dataset needs nuscenes-devkit: pip install 'wd-data[nuscenes]'"


@dataclass
class NuScenesConfig:
    """Clips of `num_frames` camera frames taken every `frame_interval` frames (12 Hz camera -> 2 Hz)."""

    dataroot: str | Path
    version: str = "v1.0-trainval"
    split: str | None = "train"  # a scene split of nuscenes.utils.splits ("train", "val", "mini_train", ...); None: all
    camera: str = "CAM_FRONT"
    num_frames: int = 24
    frame_interval: int = 6  # the paper's interval
    clip_stride: int | None = None  # picked frames between clip starts; None: num_frames (clips do not overlap)
    size: int | tuple[int, int] | None = (192, 320)
    crop: Crop = "center"
    seed: int = 0
    use_can_bus: bool | None = None  # None: use the CAN bus expansion when dataroot/can_bus exists
    captions: str | Path | None = None  # JSON object {scene name or token: caption}

    def __post_init__(self) -> None:
        check_counts(num_frames=self.num_frames, frame_interval=self.frame_interval, clip_stride=self.clip_stride)


def _wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Map radians to [-pi, pi) so a heading crossing +-pi gives a small change, not ~2 pi."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _repeat_last(rows: np.ndarray) -> np.ndarray:
    """Per-interval values (T-1, A) -> per-frame (T, A): the last frame repeats the motion that led to it."""
    return np.concatenate([rows, rows[-1:]]) if len(rows) else np.zeros((1, rows.shape[1]))


def ego_pose_actions(timestamps_us: np.ndarray, translations: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Actions (T, 2) float32 from ego poses: row i is (yaw change, mean speed) from frame i to frame i + 1.

    timestamps_us (T,) microseconds; translations (T, 3) metres; rotations (T, 4) quaternions (w, x, y, z).
    """
    from pyquaternion import Quaternion  # installed with nuscenes-devkit

    yaw = np.array([Quaternion(rotation).yaw_pitch_roll[0] for rotation in rotations])
    seconds = np.diff(np.asarray(timestamps_us, dtype=np.float64)) / 1e6
    distance = np.linalg.norm(np.diff(np.asarray(translations, dtype=np.float64)[:, :2], axis=0), axis=1)
    return _repeat_last(np.stack([_wrap_angle(np.diff(yaw)), distance / seconds], axis=1)).astype(np.float32)


def _integrate(times: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    """Trapezoid integral of a sampled signal over [start, end], interpolating at the ends."""
    inside = times[(times > start) & (times < end)]
    points = np.concatenate([[start], inside, [end]])
    return float(np.trapz(np.interp(points, times, values), points))


def can_bus_actions(timestamps_us: np.ndarray, pose_messages: list[dict[str, Any]]) -> np.ndarray:
    """Actions (T, 2) float32 from CAN bus `pose` messages (50 Hz): row i integrates the yaw rate and
    averages the speed |vel| over [frame i, frame i + 1]."""
    times = np.array([message["utime"] for message in pose_messages], dtype=np.float64) / 1e6
    speed = np.array([np.linalg.norm(message["vel"]) for message in pose_messages])
    yaw_rate = np.array([message["rotation_rate"][2] for message in pose_messages])
    frames = np.asarray(timestamps_us, dtype=np.float64) / 1e6
    rows = [
        (_integrate(times, yaw_rate, start, end), _integrate(times, speed, start, end) / (end - start))
        for start, end in zip(frames[:-1], frames[1:], strict=True)
    ]
    return _repeat_last(np.array(rows, dtype=np.float64).reshape(-1, 2)).astype(np.float32)


def _camera_frames(nusc: Any, scene: dict, camera: str) -> list[dict]:
    """Every frame of `camera` in the scene, in order, following sample_data `next` links (keyframes and sweeps)."""
    first_sample = nusc.get("sample", scene["first_sample_token"])
    if camera not in first_sample["data"]:
        raise ValueError(f"scene {scene['name']} has no camera {camera}; cameras: {sorted(first_sample['data'])}")
    records, token = [], first_sample["data"][camera]
    while token:
        record = nusc.get("sample_data", token)
        records.append(record)
        token = record["next"]
    return records


class NuScenesDataset(SkippingDataset):
    """Front-camera clips: "frames" uint8 (N, H, W, 3), "actions" float32 (N, 2) = (yaw change rad, speed m/s)
    from frame i to i + 1, and the scene's caption. The devkit is used to build the index, then released."""

    def __init__(self, config: NuScenesConfig) -> None:
        try:
            from nuscenes.nuscenes import NuScenes
        except ImportError as error:
            raise ImportError(_EXTRA_HINT) from error
        self.config = config
        dataroot = Path(config.dataroot)
        nusc = NuScenes(version=config.version, dataroot=str(dataroot), verbose=False)
        can_bus = self._can_bus(dataroot)
        captions = json.loads(Path(config.captions).read_text(encoding="utf-8")) if config.captions else {}
        self.clips: list[dict[str, Any]] = []
        for scene in self._scenes(nusc):
            records = _camera_frames(nusc, scene, config.camera)[:: config.frame_interval]
            timestamps = np.array([record["timestamp"] for record in records], dtype=np.int64)
            actions, source = self._actions(nusc, scene, records, timestamps, can_bus)
            caption = captions.get(scene["name"], captions.get(scene["token"], ""))
            for start in range(0, len(records) - config.num_frames + 1, config.clip_stride or config.num_frames):
                window = slice(start, start + config.num_frames)
                self.clips.append(
                    {
                        "paths": [str(dataroot / record["filename"]) for record in records[window]],
                        "timestamps": timestamps[window],
                        "actions": actions[window],
                        "caption": caption,
                        "scene": scene["name"],
                        "action_source": source,
                    }
                )
        if not self.clips:
            raise ValueError(
                f"{dataroot}: no scene of split {config.split!r} has {config.num_frames} {config.camera} frames "
                f"at interval {config.frame_interval}"
            )

    def _scenes(self, nusc: Any) -> list[dict]:
        if self.config.split is None:
            return list(nusc.scene)
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes(verbose=False)
        if self.config.split not in splits:
            raise ValueError(f"unknown nuScenes split {self.config.split!r}; known: {sorted(splits)}")
        names = set(splits[self.config.split])
        return [scene for scene in nusc.scene if scene["name"] in names]

    def _can_bus(self, dataroot: Path) -> Any:
        use = self.config.use_can_bus
        if use is False or (use is None and not (dataroot / "can_bus").is_dir()):
            return None
        from nuscenes.can_bus.can_bus_api import NuScenesCanBus

        return NuScenesCanBus(dataroot=str(dataroot))

    def _actions(
        self, nusc: Any, scene: dict, records: list[dict], timestamps: np.ndarray, can_bus: Any
    ) -> tuple[np.ndarray, str]:
        if can_bus is not None:
            try:
                messages = can_bus.get_messages(scene["name"], "pose", print_warnings=False)
                return can_bus_actions(timestamps, messages), "can_bus"
            except Exception as error:  # the devkit raises bare Exception for scenes without CAN data
                logger.warning("%s: no CAN bus poses (%s); using ego_pose", scene["name"], error)
        poses = [nusc.get("ego_pose", record["ego_pose_token"]) for record in records]
        translations = np.array([pose["translation"] for pose in poses])
        rotations = np.array([pose["rotation"] for pose in poses])
        return ego_pose_actions(timestamps, translations, rotations), "ego_pose"

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, index: int) -> dict[str, Any]:
        clip, config = self.clips[index], self.config
        # A fresh generator with the same seed per frame gives every frame of the clip the same crop window.
        frames = [
            read_image(path, config.size, config.crop, sample_generator(config.seed, self.epoch, index))
            for path in clip["paths"]
        ]
        return {
            "frames": torch.from_numpy(np.stack(frames)),
            "caption": clip["caption"],
            "actions": torch.from_numpy(clip["actions"]),
            "is_image": False,
            "meta": {
                "scene": clip["scene"],
                "paths": clip["paths"],
                "timestamps_us": clip["timestamps"].tolist(),
                "action_source": clip["action_source"],
                "index": index,
            },
        }
