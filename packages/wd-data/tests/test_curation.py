from __future__ import annotations

import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("scenedetect")

from wd_data.curation import CurationConfig, curate_videos, mean_flow_magnitude  # noqa: E402
from wd_data.datasets.video_text import VideoTextConfig, VideoTextDataset  # noqa: E402
from wd_data.video_io import probe_video, write_video  # noqa: E402

FPS = 10


def smooth_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 2)


def panning(num_frames: int, pixels_per_frame: int) -> list[np.ndarray]:
    texture = smooth_texture(48, 64 + num_frames * pixels_per_frame)
    return [texture[:, i * pixels_per_frame : i * pixels_per_frame + 64] for i in range(num_frames)]


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_mean_flow_measures_the_shift(shift):
    frames = panning(3, shift)
    assert mean_flow_magnitude(zip(frames[:-1], frames[1:])) == pytest.approx(shift, abs=0.35)


def test_finds_the_cut_drops_the_static_scene_and_extracts_keyframes(tmp_path):
    moving = panning(30, 2)  # 3 s panning
    static = [np.full((48, 64, 3), (200, 40, 40), np.uint8)] * 30  # 3 s of a still red frame after a hard cut
    source = write_video(tmp_path / "raw.mp4", np.stack(moving + static), fps=FPS)
    out = tmp_path / "curated"
    clips = curate_videos([source], out, CurationConfig(min_scene_seconds=1.0))
    assert [(clip.start, clip.end) for clip in clips] == [(0.0, 3.0), (3.0, 6.0)]
    kept, dropped = clips
    # 2 px/frame at the video's 48 px short side, reported in pixels at the 128 px analysis short side.
    assert kept.kept and kept.mean_flow == pytest.approx(2.0 * 128 / 48, rel=0.2)
    assert not dropped.kept and "optical flow" in dropped.reason and dropped.path is None
    assert probe_video(out / kept.path).duration == pytest.approx(3.0, abs=0.11)
    assert [name.rsplit("_", 1)[1] for name in kept.keyframes] == ["p10.jpg", "p50.jpg", "p90.jpg"]
    for percentile, name in zip((10, 50, 90), kept.keyframes):
        keyframe = cv2.cvtColor(cv2.imread(str(out / name)), cv2.COLOR_BGR2RGB).astype(np.int16)
        errors = [np.abs(keyframe - frame).mean() for frame in moving]
        assert int(np.argmin(errors)) == int(30 * percentile / 100)  # the frame on screen at that percentile
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == [kept.path]
    sample = VideoTextDataset(VideoTextConfig(out / "manifest.jsonl", num_frames=4, size=16))[0]
    assert sample["frames"].shape == (4, 16, 16, 3)  # the manifest feeds the video-text dataset directly


def test_short_scenes_are_dropped(tmp_path):
    source = write_video(tmp_path / "short.mp4", np.stack(panning(15, 2)), fps=FPS)
    (clip,) = curate_videos([source], tmp_path / "out", CurationConfig(min_scene_seconds=2.0))
    assert not clip.kept and "shorter" in clip.reason
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""


@pytest.mark.parametrize(
    "kwargs", [{"keyframe_percentiles": (-5.0, 50.0)}, {"keyframe_percentiles": ()}, {"flow_pairs": 0}, {"fps": 0}]
)
def test_bad_config_raises_value_error(kwargs):
    with pytest.raises(ValueError, match="keyframe_percentiles|flow_pairs|fps"):
        CurationConfig(**kwargs)


def test_an_unreadable_video_is_reported_and_the_others_curated(tmp_path):
    good = write_video(tmp_path / "good.mp4", np.stack(panning(30, 2)), fps=FPS)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    clips = curate_videos([tmp_path / "broken.mp4", good], tmp_path / "out", CurationConfig(min_scene_seconds=1.0))
    broken, kept = clips
    assert not broken.kept and broken.reason.startswith("unreadable: ") and "broken.mp4" in broken.reason
    assert kept.kept and (tmp_path / "out" / kept.path).is_file()
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == [kept.path]
