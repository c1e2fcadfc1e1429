"""Fixtures that write small test videos with PyAV directly (independent of wd_data.write_video)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

LEVEL_BASE, LEVEL_STEP = 10, 8  # frame i is grey 10 + 8 i: survives H.264 and reads back by rounding


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), LEVEL_BASE + LEVEL_STEP * index, np.uint8)


def _encode(path: Path, frames: list[np.ndarray], times_ms: list[int], fps: int = 10) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, time_ms in zip(frames, times_ms):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = time_ms, Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def index_video_factory(tmp_path_factory):
    """make(name, num_frames=32, height=48, width=64, fps=10, times_ms=None) -> path of an mp4 whose frame i
    is grey level 10 + 8 i, shown at times_ms[i] (default i / fps)."""
    folder = tmp_path_factory.mktemp("videos")

    def make(name, num_frames=32, height=48, width=64, fps=10, times_ms=None):
        times_ms = times_ms if times_ms is not None else [round(1000 * i / fps) for i in range(num_frames)]
        frames = [index_frame(i, height, width) for i in range(num_frames)]
        return _encode(folder / name, frames, times_ms, fps)

    return make


@pytest.fixture(scope="session")
def index_video(index_video_factory) -> Path:
    """32 frames, 64x48, 10 fps, frame i grey 10 + 8 i."""
    return index_video_factory("index.mp4")


@pytest.fixture(scope="session")
def texture_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(path, frames as decoded, uint8 (12, 48, 64, 3)) of a 10 fps video of one smooth colour texture."""
    y, x = np.mgrid[0:48, 0:64]
    texture = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    path = _encode(tmp_path_factory.mktemp("texture") / "texture.mp4", [texture] * 12, [100 * i for i in range(12)])
    with av.open(str(path)) as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    return path, decoded


@pytest.fixture(scope="session")
def frame_indices():
    """Turn uint8 (N, H, W, 3) index-video frames back into their frame numbers."""

    def decode(frames) -> list[int]:
        levels = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1).mean(axis=1)
        return np.rint((levels - LEVEL_BASE) / LEVEL_STEP).astype(int).tolist()

    return decode
