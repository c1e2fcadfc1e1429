from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wd_data.errors import MediaReadError
from wd_data.video_io import probe_video, read_video, write_video

NUM_SOURCE_FRAMES, SOURCE_FPS = 32, 10


@settings(max_examples=25, deadline=None)
@given(
    stride=st.integers(1, 4),
    first=st.integers(0, 10),
    num_frames=st.integers(1, 6),
    height=st.integers(4, 40),
    width=st.integers(4, 40),
    crop=st.sampled_from(["center", "random"]),
)
def test_read_video_picks_frames_by_time_at_any_size(
    index_video, frame_indices, stride, first, num_frames, height, width, crop
):
    assume(first + stride * (num_frames - 1) < NUM_SOURCE_FRAMES)  # past the end: test_clip_past_the_end_raises
    frames = read_video(
        index_video,
        num_frames,
        frame_stride=stride,
        start=first / SOURCE_FPS,
        size=(height, width),
        crop=crop,
        generator=torch.Generator().manual_seed(0),
    )
    assert frames.shape == (num_frames, height, width, 3) and frames.dtype == np.uint8
    assert frame_indices(frames) == [first + stride * j for j in range(num_frames)]


def test_clip_past_the_end_raises(index_video):
    assert read_video(index_video, 4, frame_stride=10, start=0.1).shape[0] == 4  # frames 1, 11, 21, 31
    with pytest.raises(MediaReadError, match="clip needs a frame"):
        read_video(index_video, 4, frame_stride=10, start=0.2)  # would need frame 32


@pytest.mark.parametrize(
    "kwargs",
    [{"num_frames": 33}, {"num_frames": 1, "start": 3.3}, {"num_frames": 2, "start": 100.0}],
    ids=["more_frames_than_the_video", "start_past_the_last_frame", "start_far_beyond_the_end"],
)
def test_clip_beyond_the_video_raises_a_clear_error(index_video, kwargs):
    with pytest.raises(MediaReadError, match=r"video ends at 3\.200 s; the clip needs a frame at"):
        read_video(index_video, **kwargs)


@pytest.mark.parametrize(
    ("fps", "expected"), [(20, [4, 4, 5, 5, 6, 6]), (5, [4, 6, 8, 10, 12, 14]), (4, [4, 6, 9, 11, 14, 16])]
)
def test_target_fps_resamples_by_time(index_video, frame_indices, fps, expected):
    assert frame_indices(read_video(index_video, 6, fps=fps, start=0.4)) == expected


def test_variable_frame_rate_picks_the_frame_on_screen(index_video_factory, frame_indices):
    times_ms = [0, 30, 250, 260, 270, 600, 610, 1000, 1450, 1500]
    path = index_video_factory("vfr.mp4", num_frames=len(times_ms), times_ms=times_ms)
    targets_ms = [100 * j for j in range(15)]
    expected = [max(i for i, t in enumerate(times_ms) if t <= target) for target in targets_ms]
    assert frame_indices(read_video(path, 15, fps=10)) == expected


def test_center_and_random_crop_cut_the_decoded_frame(texture_video):
    path, decoded = texture_video
    center = read_video(path, 3, size=(48, 32))  # no resize needed: the crop is a window of the decoded frames
    np.testing.assert_array_equal(center, decoded[:3, :, 16:48])
    offsets = set()
    for seed in range(6):
        frames = read_video(path, 3, size=(30, 64), crop="random", generator=torch.Generator().manual_seed(seed))
        matches = [y for y in range(19) if np.array_equal(frames, decoded[:3, y : y + 30])]
        assert len(matches) == 1  # one window, the same in every frame
        offsets.add(matches[0])
        again = read_video(path, 3, size=(30, 64), crop="random", generator=torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(again, frames)
    assert len(offsets) > 1


def test_resize_matches_a_reference_resize(texture_video):
    path, decoded = texture_video
    frames = read_video(path, 1, size=(24, 32))
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(decoded[0]).permute(2, 0, 1)[None].double(), size=(24, 32), mode="bilinear", antialias=True
    )[0].permute(1, 2, 0)
    assert np.abs(frames[0].astype(np.float64) - reference.numpy()).mean() < 2.0


def test_probe_video(index_video):
    info = probe_video(index_video)
    assert (info.width, info.height, info.fps) == (64, 48, SOURCE_FPS)
    assert info.duration == pytest.approx(NUM_SOURCE_FRAMES / SOURCE_FPS, abs=0.11)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": 2, "frame_stride": 2, "fps": 5},
        {"num_frames": 2, "start": -1.0},
        {"num_frames": 2, "frame_stride": 0},
        {"num_frames": 2, "size": (0, 4)},
        {"num_frames": 2, "size": 8, "crop": "top"},
        {"num_frames": 2.5},
        {"num_frames": 2, "frame_stride": 1.5},
        {"num_frames": 2, "fps": float("nan")},
        {"num_frames": 2, "start": float("nan")},
        {"num_frames": 2, "size": (4, 4, 4)},
        {"num_frames": 2, "size": 2.5},
    ],
)
def test_bad_arguments_raise_value_error(index_video, kwargs):
    with pytest.raises(ValueError, match="num_frames|frame_stride|fps|start|size|crop"):
        read_video(index_video, **kwargs)


@pytest.mark.parametrize("suffix", [".mkv", ".ts", ".avi", ".h264"])
def test_other_containers_read_by_time(tmp_path, frame_indices, suffix):
    # MPEG-TS starts at a non-zero time and seeks imprecisely; AVI stores H.264 B-frames without presentation
    # times; a raw .h264 stream has no timestamps (nor frame rate: FFmpeg assumes 25 fps).
    levels = np.arange(NUM_SOURCE_FRAMES, dtype=np.uint8)[:, None, None, None] * 8 + 10
    path = write_video(tmp_path / f"clip{suffix}", np.broadcast_to(levels, (NUM_SOURCE_FRAMES, 48, 64, 3)), fps=10)
    info = probe_video(path)
    fps = 25 if suffix == ".h264" else SOURCE_FPS
    assert info.fps == fps and info.duration == pytest.approx(NUM_SOURCE_FRAMES / fps, abs=0.11)
    frames = read_video(path, 5, frame_stride=3, start=10.5 / fps)
    assert frame_indices(frames) == [10, 13, 16, 19, 22]
