"""Curate raw footage (paper 4.1): split into single-scene clips, drop slow-motion clips, pick caption keyframes.

Scene cuts come from PySceneDetect's ContentDetector, motion from OpenCV's Farneback optical flow; both are
in the `curation` extra (pip install 'wd-data[curation]').
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wd_data._atomic import atomic_path
from wd_data.errors import MediaReadError
from wd_data.transforms import resized_shape
from wd_data.video_io import iter_frames, probe_video, write_video

logger = logging.getLogger(__name__)

_EXTRA_HINT = "curation needs scenedetect and OpenCV: pip install 'wd-data[curation]'"


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as error:
        raise ImportError(_EXTRA_HINT) from error
    return cv2


@dataclass
class CurationConfig:
    """Thresholds of the curation step; the flow threshold is in pixels per frame at `flow_short_side`."""

    scene_threshold: float = 27.0  # ContentDetector's default: HSV change that counts as a cut
    min_scene_seconds: float = 2.0  # shorter scenes are dropped
    flow_short_side: int = 128  # flow is measured at this short side (smaller videos: at theirs, then rescaled)
    flow_pairs: int = 8  # consecutive-frame pairs spread over the clip whose flow is averaged
    min_mean_flow: float = 0.25  # below this the clip counts as slow motion / static; calibrate on your footage
    keyframe_percentiles: tuple[float, ...] = (10.0, 50.0, 90.0)  # the paper's caption keyframes
    fps: float | None = None  # fps of written clips; None: the source's

    def __post_init__(self) -> None:
        if not self.keyframe_percentiles or not all(0 <= p <= 100 for p in self.keyframe_percentiles):
            raise ValueError(f"keyframe_percentiles must be in [0, 100], got {self.keyframe_percentiles}")
        if self.flow_pairs < 1 or self.flow_short_side < 1:
            found = f"{self.flow_pairs} and {self.flow_short_side}"
            raise ValueError(f"flow_pairs and flow_short_side must be >= 1, got {found}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {self.fps}")


@dataclass
class CuratedClip:
    """One detected scene, whether it was kept, and (if kept) where its clip and keyframes were written."""

    source: str
    start: float  # seconds in the source
    end: float
    mean_flow: float  # px/frame at flow_short_side; NaN when the scene was too short to measure
    kept: bool
    reason: str = ""  # why it was dropped
    path: str | None = None  # written clip, relative to the output folder
    keyframes: list[str] = field(default_factory=list)  # JPEGs relative to the output folder


def detect_scenes(path: str | os.PathLike, threshold: float = 27.0) -> list[tuple[float, float]]:
    """[(start s, end s)] of the single-shot scenes of a video, found by PySceneDetect's ContentDetector."""
    try:
        from scenedetect import ContentDetector, VideoOpenFailure, detect
    except ImportError as error:
        raise ImportError(_EXTRA_HINT) from error
    try:
        # start_in_scene: a video without cuts is one scene rather than none.
        scenes = detect(str(path), ContentDetector(threshold=threshold), start_in_scene=True)
    except (VideoOpenFailure, OSError) as error:
        raise MediaReadError(f"{path}: scene detection cannot open it ({error})") from None
    return [(start.seconds, end.seconds) for start, end in scenes]


def mean_flow_magnitude(frame_pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean Farneback optical-flow magnitude (px/frame) over pairs of uint8 (H, W, 3) frames; NaN if none."""
    cv2 = _import_cv2()
    magnitudes = []
    for first, second in frame_pairs:
        previous = cv2.cvtColor(first, cv2.COLOR_RGB2GRAY)
        current = cv2.cvtColor(second, cv2.COLOR_RGB2GRAY)
        # OpenCV's documented defaults for Farneback (3-level pyramid, 15 px window).
        flow = cv2.calcOpticalFlowFarneback(previous, current, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        magnitudes.append(float(np.linalg.norm(flow, axis=2).mean()))
    return float(np.mean(magnitudes)) if magnitudes else float("nan")


def _flow_pairs(path: Path, start: float, end: float, size: tuple[int, int], pairs: int, fps: float):
    """Yield `pairs` consecutive-frame pairs spread evenly over [start, end), decoding once, constant memory."""
    every = max(1, round((end - start) * fps) // pairs)
    previous = None
    for index, (_, frame) in enumerate(iter_frames(path, start, end, size)):
        if previous is not None and index % every == 1 % every:
            yield previous, frame
        previous = frame


def _save_jpeg(path: Path, frame: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        Image.fromarray(frame).save(temporary, format="JPEG", quality=95)


def _write_clip(source: Path, clip: CuratedClip, out_dir: Path, stem: str, config: CurationConfig, fps: float):
    """Re-encode the scene to `stem.mp4` and save its percentile keyframes, in one decoding pass."""
    length = clip.end - clip.start
    wanted = [clip.start + length * p / 100 for p in config.keyframe_percentiles]
    keyframes: dict[int, np.ndarray] = {}

    def frames():
        for time, frame in iter_frames(source, clip.start, clip.end):
            # The keyframe for time t is the frame on screen at t: the last one starting at or before it
            # (the first frame, when t precedes it by a rounding error).
            for number, target in enumerate(wanted):
                if time <= target or number not in keyframes:
                    keyframes[number] = frame
            yield frame

    write_video(out_dir / f"{stem}.mp4", frames(), config.fps or fps)
    clip.path = f"{stem}.mp4"
    for number, percentile in enumerate(config.keyframe_percentiles):
        name = f"{stem}_p{percentile:g}.jpg"
        _save_jpeg(out_dir / name, keyframes[number])
        clip.keyframes.append(name)


def curate_video(path: str | os.PathLike, out_dir: str | os.PathLike, config: CurationConfig) -> list[CuratedClip]:
    """Split one video into scenes; write kept scenes as `<stem>_<scene>.mp4` plus keyframe JPEGs in out_dir."""
    path, out_dir = Path(path), Path(out_dir)
    info = probe_video(path)
    fps = info.fps or 25.0
    # Upscaling would only blur the texture Farneback tracks: measure small videos at their own size and
    # convert the magnitudes to pixels at flow_short_side.
    short_side = min(info.height, info.width)
    analysis_side = min(short_side, config.flow_short_side)
    flow_size = resized_shape((info.height, info.width), (analysis_side, analysis_side))
    flow_scale = config.flow_short_side / analysis_side
    clips = []
    for number, (start, end) in enumerate(detect_scenes(path, config.scene_threshold)):
        clip = CuratedClip(str(path), start, end, float("nan"), kept=False)
        clips.append(clip)
        if end - start < config.min_scene_seconds:
            clip.reason = f"shorter than {config.min_scene_seconds} s"
            continue
        pairs = _flow_pairs(path, start, end, flow_size, config.flow_pairs, fps)
        clip.mean_flow = flow_scale * mean_flow_magnitude(pairs)
        if not clip.mean_flow >= config.min_mean_flow:
            clip.reason = f"mean optical flow {clip.mean_flow:.3f} < {config.min_mean_flow} px/frame"
            continue
        clip.kept = True
        _write_clip(path, clip, out_dir, f"{path.stem}_{number:04d}", config, fps)
    return clips


def curate_videos(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, config: CurationConfig | None = None
) -> list[CuratedClip]:
    """Curate every video, then write `out_dir/manifest.jsonl` (one kept clip per line, caption empty until
    captioned) that VideoTextDataset reads as is. Returns all scenes, kept and dropped (an unreadable video is
    one dropped entry, start = end = 0)."""
    config = config or CurationConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for path in paths:
        try:
            clips += curate_video(path, out_dir, config)
        except MediaReadError as error:  # one unreadable video must not end the whole job
            logger.warning("skipping %s", error)
            clips.append(CuratedClip(str(path), 0.0, 0.0, float("nan"), kept=False, reason=f"unreadable: {error}"))
    with atomic_path(out_dir / "manifest.jsonl") as temporary, open(temporary, "w", encoding="utf-8") as file:
        for clip in clips:
            if clip.kept:
                file.write(json.dumps({**asdict(clip), "caption": ""}) + "\n")
    logger.info("kept %d of %d scenes from %d videos", sum(c.kept for c in clips), len(clips), len(paths))
    return clips
