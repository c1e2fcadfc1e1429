from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from wd_data.collate import collate_samples
from wd_data.datasets.video_text import VideoTextConfig, VideoTextDataset


@pytest.fixture
def webvid_folder(tmp_path, index_video):
    """WebVid layout: <root>/<page_dir>/<videoid>.mp4 and a CSV with videoid, page_dir, name (the caption)."""
    (tmp_path / "videos" / "001").mkdir(parents=True)
    for video_id in ("10", "11", "12"):
        (tmp_path / "videos" / "001" / f"{video_id}.mp4").write_bytes(index_video.read_bytes())
    (tmp_path / "videos" / "001" / "bad.mp4").write_bytes(b"not a video")
    rows = [
        "videoid,contentUrl,duration,page_dir,name",
        "10,u,PT3S,001,a cat",
        "bad,u,PT3S,001,broken",
        "11,u,PT3S,001,a dog",
        '12,u,PT3S,001,"a bird, flying"',
    ]
    (tmp_path / "webvid.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_csv_samples_follow_the_schema(webvid_folder, frame_indices):
    config = VideoTextConfig(
        webvid_folder / "webvid.csv", video_root=webvid_folder / "videos", num_frames=4, size=16, frame_stride=2
    )
    dataset = VideoTextDataset(config)
    sample = dataset[0]
    assert sample["frames"].shape == (4, 16, 16, 3) and sample["frames"].dtype == torch.uint8
    assert sample["caption"] == "a cat" and sample["actions"] is None and sample["is_image"] is False
    indices = frame_indices(sample["frames"])
    assert indices == [indices[0] + 2 * j for j in range(4)]
    assert indices[0] == int(sample["meta"]["start"] * 10)  # the frame on screen at the start time
    assert dataset[3]["caption"] == "a bird, flying"


def test_clip_starts_are_seeded_per_sample_and_epoch(webvid_folder):
    config = VideoTextConfig(webvid_folder / "webvid.csv", video_root=webvid_folder / "videos", num_frames=2, size=8)
    first, again = VideoTextDataset(config), VideoTextDataset(config)
    starts = [first[i]["meta"]["start"] for i in (0, 2, 3)]
    assert starts == [again[i]["meta"]["start"] for i in (0, 2, 3)]
    assert len(set(starts)) == 3  # same video, different draws per index
    assert all(0 <= start <= 3.2 - 0.2 for start in starts)
    first.set_epoch(1)
    assert [first[i]["meta"]["start"] for i in (0, 2, 3)] != starts


def test_corrupt_sample_is_skipped_and_counted(webvid_folder, caplog):
    config = VideoTextConfig(webvid_folder / "webvid.csv", video_root=webvid_folder / "videos", num_frames=2, size=8)
    dataset = VideoTextDataset(config)
    sample = dataset[1]  # the broken row: replaced by the next one
    assert sample["caption"] == "a dog" and sample["meta"]["num_skipped"] == 1
    assert dataset.num_skipped == 1 and "bad.mp4" in caplog.text
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate_samples))
    assert sum(len(batch["caption"]) for batch in batches) == 4  # the epoch keeps its length
    assert dataset.num_skipped == 2


def test_jsonl_manifest_with_paths_and_a_too_short_video(tmp_path, index_video_factory):
    long_video = index_video_factory("long.mp4")
    short_video = index_video_factory("short.mp4", num_frames=3)
    lines = [{"path": str(short_video), "caption": "short"}, {"path": str(long_video), "caption": "long"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    dataset = VideoTextDataset(VideoTextConfig(tmp_path / "m.jsonl", num_frames=8, size=8, fps=5))
    assert dataset[0]["caption"] == "long" and dataset.num_skipped == 1


def test_manifest_without_video_column_is_rejected(tmp_path):
    (tmp_path / "m.csv").write_text("caption\nhello\n")
    with pytest.raises(ValueError, match="row 1"):
        VideoTextDataset(VideoTextConfig(tmp_path / "m.csv"))


def test_every_sample_corrupt_raises_instead_of_looping(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.mp4").write_text("not a video")
    (tmp_path / "m.csv").write_text("path,caption\na.mp4,a\nb.mp4,b\n")
    dataset = VideoTextDataset(VideoTextConfig(tmp_path / "m.csv", num_frames=2, size=8))
    with pytest.raises(RuntimeError, match="no readable sample in 2 of 2 indices from 1"):
        dataset[1]
    with pytest.raises(RuntimeError, match="no readable sample"):
        list(DataLoader(dataset, batch_size=2, collate_fn=collate_samples))
    assert dataset.num_skipped == 2 + 2


@pytest.mark.parametrize("overrides", [{"num_frames": 0}, {"frame_stride": 0}])
def test_bad_counts_are_rejected(tmp_path, overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        VideoTextConfig(tmp_path / "m.csv", **overrides)
