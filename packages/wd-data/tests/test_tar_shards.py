"""Tar shards in img2dataset's layout: samples, bad records skipped with their key, reading resumes anywhere."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from wd_data.collate import collate_samples
from wd_data.datasets.tar_shards import TarShardConfig, TarShardDataset, expand_shards
from wd_data.errors import DataSourceError
from wd_data.testing import image_record, write_tar


def levels(frames: torch.Tensor) -> list[int]:
    return [round(level) for level in frames.double().mean(dim=(1, 2, 3)).tolist()]


@pytest.fixture
def shards(tmp_path):
    """Two shards of 5 images each (grey 20 i); shard 0's image 2 is corrupt, shard 1's image 4 has its caption
    only in the .json."""
    for shard in range(2):
        members = []
        for item in range(5):
            kind = {(0, 2): "corrupt_image", (1, 4): "json_caption_only"}.get((shard, item), "good")
            members += image_record(f"{shard:05d}{item:04d}", 20 * (5 * shard + item), kind)
        write_tar(tmp_path / f"{shard:05d}.tar", members)
    return str(tmp_path / "{00000..00001}.tar")


def test_shards_group_images_and_skip_corrupt_ones(shards):
    dataset = TarShardDataset(TarShardConfig(shards, num_frames=3, size=(8, 12)))
    assert dataset.media == "image"
    samples = list(dataset)
    assert len(samples) == 1 + 1 and dataset.num_skipped == 1  # 4 good + 5 images: one group each, rest dropped
    assert "00000.tar:000000002" in dataset.skips.reasons[0]
    for sample in samples:
        assert sample["frames"].shape == (3, 8, 12, 3) and sample["is_image"] is True
        for level, caption in zip(levels(sample["frames"]), sample["meta"]["captions"], strict=True):
            assert caption in (f"caption {level}", f"json {level}")


def test_reading_shards_leaves_no_file_open(shards):
    """Whole passes and readers dropped after one record close their shard files (webdataset's opener does not)."""
    dataset = TarShardDataset(TarShardConfig(shards, num_frames=1, size=(8, 12)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        list(dataset)
        for shard in range(2):
            next(iter(dataset.records(shard)))  # dropped at once
        gc.collect()
    assert [str(warning.message) for warning in caught if warning.category is ResourceWarning] == []


def test_shards_split_across_dataloader_workers(shards):
    dataset = TarShardDataset(TarShardConfig(shards, num_frames=2, size=8))
    batches = list(DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_samples))
    # Each worker reads one shard: 4 readable images -> 2 samples, 5 -> 2 samples (1 left over).
    assert len(batches) == 4
    assert {batch["meta"][0]["shard"] for batch in batches} == set(expand_shards(shards))


@pytest.mark.parametrize("kind", ["corrupt_image", "not_utf8", "malformed_json", "no_caption"])
def test_each_bad_record_is_skipped_with_its_shard_and_key(tmp_path, kind):
    members = image_record("a", 10) + image_record("b", 50, kind) + image_record("c", 90)
    write_tar(tmp_path / "s.tar", members)
    items = list(TarShardDataset(TarShardConfig(tmp_path / "s.tar", num_frames=2, size=8)).read_shard(0))
    assert [item.position for item in items] == [2, 3]
    bad, sample = items
    assert bad.sample is None and bad.where == f"{tmp_path / 's.tar'}:b"
    reason = {"corrupt_image": "cannot decode image", "not_utf8": "not UTF-8", "malformed_json": "does not parse",
              "no_caption": "no caption"}[kind]
    assert reason in str(bad.error)
    assert sample.error is None and levels(sample.sample["frames"]) == [10, 90]


def test_json_caption_is_used_when_there_is_no_txt(tmp_path):
    write_tar(tmp_path / "s.tar", image_record("a", 10, "json_caption_only"))
    (item,) = TarShardDataset(TarShardConfig(tmp_path / "s.tar", num_frames=1, size=8)).read_shard(0)
    assert item.sample["caption"] == "json 10"


def test_a_reader_error_mid_shard_is_one_line_and_the_records_go_on(tmp_path):
    """A member name repeated within a record (here one with a line break in it) spoils that record's read; the
    error names the member on one line (webdataset's tuple of arguments left out), and the records around it are
    still read."""
    members = image_record("a", 10) + image_record("b\nc", 50) + [("b\nc.jpg", b"again")] + image_record("d", 90)
    write_tar(tmp_path / "s.tar", members)
    items = list(TarShardDataset(TarShardConfig(tmp_path / "s.tar", num_frames=1, size=8)).read_shard(0))
    (bad,) = [item for item in items if item.error is not None]
    assert str(bad.error).startswith("unreadable tar (b c.jpg: duplicate file name")
    assert [levels(item.sample["frames"])[0] for item in items if item.sample is not None][::2] == [10, 90]


def test_truncated_shard_yields_its_first_records_then_one_error(tmp_path):
    path = write_tar(tmp_path / "s.tar", [member for key in range(6) for member in image_record(f"{key}", 10 * key)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    items = list(TarShardDataset(TarShardConfig(path, num_frames=1, size=8)).read_shard(0))
    samples = [item for item in items if item.sample is not None]
    assert 1 <= len(samples) < 6 and [levels(s.sample["frames"])[0] for s in samples] == [10 * k for k in
                                                                                          range(len(samples))]
    assert items[-1].sample is None and "truncated tar" in str(items[-1].error)


def test_video_shards_give_one_clip_per_video(tmp_path, index_video_factory, frame_indices):
    video = index_video_factory("shard_clip.mp4").read_bytes()
    members = [("v0.mp4", video), ("v0.txt", b"a grey ramp"), ("v1.mp4", b"not a video"), ("v1.txt", b"broken"),
               ("v2.mp4", video), ("v2.txt", b"again")]
    write_tar(tmp_path / "videos.tar", members)
    dataset = TarShardDataset(TarShardConfig(tmp_path / "videos.tar", num_frames=4, size=16, frame_stride=2))
    assert dataset.media == "video"
    items = list(dataset.read_shard(0))
    assert [item.sample is None for item in items] == [False, True, False]
    clip = items[0].sample
    assert clip["frames"].shape == (4, 16, 16, 3) and clip["caption"] == "a grey ramp" and not clip["is_image"]
    indices = frame_indices(clip["frames"])
    assert indices == [indices[0] + 2 * j for j in range(4)] and indices[0] == int(clip["meta"]["start"] * 10)
    assert "v1" in items[1].where and "<video bytes>" in str(items[1].error)


def test_nothing_decodable_raises_instead_of_an_empty_epoch(tmp_path):
    write_tar(tmp_path / "bad.tar", [(f"{key}.jpg", b"garbage") for key in ("a", "b", "c")])
    with pytest.raises(DataSourceError, match="nothing decodable"):
        list(TarShardDataset(TarShardConfig(tmp_path / "bad.tar", num_frames=2, size=8, media="image")))
    (tmp_path / "not_a_tar.tar").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="no shard holds an image or a video"):
        TarShardDataset(TarShardConfig(tmp_path / "not_a_tar.tar", num_frames=2, size=8))


def test_shard_lists_from_a_folder_a_pattern_and_a_list(tmp_path, shards):
    folder = sorted(str(path) for path in (tmp_path.glob("*.tar")))
    assert expand_shards(tmp_path) == folder == expand_shards(shards) == expand_shards(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar shards"):
        TarShardDataset(TarShardConfig(tmp_path / "empty"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["good", "good", "corrupt_image", "no_caption"]), min_size=1, max_size=9),
       num_frames=st.integers(1, 3), data=st.data())
def test_reading_from_any_sample_boundary_continues_the_same_stream(tmp_path_factory, kinds, num_frames, data):
    """What a resumed reader needs: read_shard(start=p), p the position after some sample, yields exactly the
    items the full read yields after that sample."""
    path = tmp_path_factory.mktemp("prop") / "s.tar"
    write_tar(path, [m for key, kind in enumerate(kinds) for m in image_record(f"{key:03d}", 10 * key, kind)])
    dataset = TarShardDataset(TarShardConfig(path, num_frames=num_frames, size=4, media="image"))
    full = list(dataset.read_shard(0, draw=3))
    boundaries = [0] + [index + 1 for index, item in enumerate(full) if item.sample is not None]
    cut = data.draw(st.sampled_from(boundaries))
    start = full[cut - 1].position if cut else 0
    resumed = list(dataset.read_shard(0, start=start, draw=3))
    assert [(item.position, item.where, item.error is None) for item in resumed] == [
        (item.position, item.where, item.error is None) for item in full[cut:]]
    for again, first in zip(resumed, full[cut:], strict=True):
        if first.sample is not None:
            assert torch.equal(again.sample["frames"], first.sample["frames"])
