from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wd_data.video_io import probe_video, read_video, write_video


def moving_gradient(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth frames (compress well) that change every frame, so frame order is checkable."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([x * 2 + 5 * i, y * 3 + 4 * i, np.full_like(x, 8 * i)], -1) for i in range(num_frames)]
    return np.stack(frames).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(("suffix", "max_mean_error"), [(".mp4", 4.0), (".gif", 3.0)])
def test_round_trip(tmp_path, suffix, max_mean_error):
    frames = moving_gradient(20, 48, 64)
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=10)
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (64, 48, 10)
    decoded = read_video(path, 20)
    assert decoded.shape == frames.shape
    errors = np.abs(decoded.astype(np.int16) - frames).reshape(20, -1).mean(axis=1)
    assert errors.max() < max_mean_error
    # Each decoded frame is closest to its own source frame: order and timing survive.
    distances = np.abs(decoded[:, None].astype(np.int16) - frames[None]).mean(axis=(2, 3, 4))
    assert distances.argmin(axis=1).tolist() == list(range(20))


@pytest.mark.parametrize(("height", "width"), [(33, 64), (48, 35), (17, 23)])
def test_odd_sizes_are_padded_to_even(tmp_path, height, width):
    frames = moving_gradient(6, height, width)
    decoded = read_video(write_video(tmp_path / "odd.mp4", frames, fps=8), 6)
    assert decoded.shape == (6, height + height % 2, width + width % 2, 3)
    assert np.abs(decoded[:, :height, :width].astype(np.int16) - frames).mean() < 6.0


def test_accepts_torch_tensors_and_iterables(tmp_path):
    frames = moving_gradient(5, 16, 16)
    from_tensor = read_video(write_video(tmp_path / "t.mp4", torch.from_numpy(frames), fps=5), 5)
    from_iterable = read_video(write_video(tmp_path / "i.mp4", iter(list(frames)), fps=5), 5)
    for decoded in (from_tensor, from_iterable):
        assert decoded.shape == frames.shape and np.abs(decoded.astype(np.int16) - frames).mean() < 4.0


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((3, 8, 8, 3), np.float32),
        np.zeros((3, 8, 8), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
        [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)],
    ],
)
def test_bad_frames_raise_and_leave_no_file(tmp_path, frames):
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", frames, fps=5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -1.0, float("nan"), float("inf")])
def test_bad_fps_raises_value_error(tmp_path, fps):
    with pytest.raises(ValueError, match="fps must be finite and in"):
        write_video(tmp_path / "bad.mp4", moving_gradient(2, 8, 8), fps=fps)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_failing_write_closes_its_files(tmp_path, suffix):
    def frames_then_a_bad_one():
        yield from moving_gradient(3, 16, 16)
        yield np.zeros((16, 18, 3), np.uint8)

    open_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(ValueError, match="one size"):
            write_video(tmp_path / f"bad{suffix}", frames_then_a_bad_one(), fps=5)
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("clip.xyz", "to a '.xyz' file; use .mp4"), ("clip.png", "to a '.png' file; use .mp4"), ("clip", "suffix")],
)
def test_unsupported_suffix_names_the_problem_and_leaves_no_file(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / name, moving_gradient(2, 8, 8), fps=5)
    assert list(tmp_path.iterdir()) == []
