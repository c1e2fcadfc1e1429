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


@pytest.mark.parametrize(("header", "message"), [("caption", "none of the columns path, video, videoid"),
                                                 ("path,length", "no caption column")])
def test_manifest_without_a_video_or_caption_column_is_rejected(tmp_path, header, message):
    (tmp_path / "m.csv").write_text(f"{header}\nhello\n")
    with pytest.raises(ValueError, match=message):
        VideoTextDataset(VideoTextConfig(tmp_path / "m.csv"))


def test_bad_csv_rows_are_skipped_with_their_line(webvid_folder, caplog):
    lines = [b"videoid,page_dir,name", b"10,001,a cat", b'11,001,"a stray quote', b"12,001,caf\xe9", b"11,001",
             b"", b"12,001,a bird"]
    (webvid_folder / "bad.csv").write_bytes(b"\n".join(lines) + b"\n")
    dataset = VideoTextDataset(VideoTextConfig(webvid_folder / "bad.csv", video_root=webvid_folder / "videos",
                                               num_frames=2, size=8))
    assert [caption for _, caption in dataset.items] == ["a cat", "a bird"]
    assert dataset.num_skipped == 3
    reasons = dataset.skips.reasons
    assert "bad.csv:3: malformed CSV row" in reasons[0] and "bad.csv:4: malformed CSV row" in reasons[1]
    assert "bad.csv:5: 2 fields, the header has 3" in reasons[2] and "bad.csv:3" in caplog.text
    assert dataset[1]["caption"] == "a bird"


def test_bad_jsonl_rows_are_skipped_with_their_line(tmp_path, index_video):
    video = str(index_video)
    rows = [json.dumps({"path": video, "caption": "good"}).encode(), b"[1, 2]", b"{broken",
            json.dumps({"path": video}).encode(), json.dumps({"path": video, "caption": None}).encode(),
            json.dumps({"caption": "no video"}).encode(), b'{"path": "x.mp4", "caption": "caf\xe9"}',
            json.dumps({"videoid": 7, "caption": ""}).encode()]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(rows))
    dataset = VideoTextDataset(VideoTextConfig(tmp_path / "m.jsonl", num_frames=2, size=8))
    assert [(path.name, caption) for path, caption in dataset.items] == [("index.mp4", "good"), ("7.mp4", "")]
    # Lines that do not parse are found first, rows without a video or a caption after them.
    expected = ["m.jsonl:2: a list, not an object", "m.jsonl:3: not a JSON line", "m.jsonl:7: not a JSON line",
                "m.jsonl:4: no caption", "m.jsonl:5: caption is None, not a string"]
    assert [reason.split(str(tmp_path) + "/")[1][: len(line)] for reason, line in
            zip(dataset.skips.reasons, expected, strict=True)] == expected
    assert dataset.num_skipped == 6  # also line 6 (no video)


def test_manifest_of_nothing_but_bad_rows_is_one_clear_error(tmp_path):
    (tmp_path / "m.jsonl").write_text("[1]\n2\n")
    with pytest.raises(ValueError, match="m.jsonl: no usable rows; first: .*m.jsonl:1: a list, not an object"):
        VideoTextDataset(VideoTextConfig(tmp_path / "m.jsonl"))


def test_video_folder_with_and_without_sidecar_captions(tmp_path, index_video):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").write_bytes(index_video.read_bytes())
    (tmp_path / "a.txt").write_text("a grey ramp\n")
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")
    dataset = VideoTextDataset(VideoTextConfig(tmp_path, num_frames=2, size=8))
    assert len(dataset) == 3 and dataset[0]["caption"] == "a grey ramp" and dataset[1]["caption"] == ""
    assert dataset[2]["caption"] == "a grey ramp" and dataset.num_skipped == 1  # c's caption: replaced by a
    assert "c.txt: caption is not UTF-8" in dataset.skips.reasons[0]


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
