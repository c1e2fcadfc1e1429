from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wd_data.collate import collate_samples
from wd_data.datasets.image_text import ImageFolderDataset, ImageTextConfig, ImageTextShards


def jpeg_bytes(level: int, height: int = 40, width: int = 60) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), level, np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def levels(frames: torch.Tensor) -> list[int]:
    return [round(level) for level in frames.double().mean(dim=(1, 2, 3)).tolist()]


@pytest.fixture
def image_folder(tmp_path):
    """Ten images grey 20 i with captions "image i"."""
    for index in range(10):
        (tmp_path / f"{index:03d}.jpg").write_bytes(jpeg_bytes(20 * index))
        (tmp_path / f"{index:03d}.txt").write_text(f"image {index}\n")
    return tmp_path


def test_folder_samples_are_groups_of_independent_images(image_folder):
    dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=3, size=(16, 24)))
    assert len(dataset) == 10 // 3
    seen = []
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["frames"].shape == (3, 16, 24, 3) and sample["frames"].dtype == torch.uint8
        assert sample["is_image"] is True and sample["actions"] is None
        numbers = [level // 20 for level in levels(sample["frames"])]
        assert sample["meta"]["captions"] == [f"image {n}" for n in numbers]  # each image keeps its caption
        assert sample["caption"] == " | ".join(sample["meta"]["captions"])
        seen += numbers
    assert len(set(seen)) == len(seen) == 9  # one shuffle, no image twice in an epoch


def test_folder_skips_corrupt_images_and_counts_them(image_folder):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=11, size=8))
    with pytest.raises(RuntimeError, match="no readable sample"):
        dataset[0]  # only 10 readable images for an 11-image sample
    dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=10, size=8))
    sample = dataset[0]
    assert sorted(level // 20 for level in levels(sample["frames"])) == list(range(10))
    assert dataset.num_skipped == 1


def test_folder_shuffle_depends_on_seed_and_epoch(image_folder):
    def first_group(seed, epoch):
        dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=3, size=8, seed=seed))
        dataset.set_epoch(epoch)
        return dataset[0]["meta"]["paths"]

    assert first_group(0, 0) == first_group(0, 0)
    assert len({tuple(first_group(seed, epoch)) for seed in range(3) for epoch in range(2)}) > 1


def write_shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    """Two img2dataset-style shards of 5 images each; one image corrupt, one caption only in the .json."""
    for shard in range(2):
        members = []
        for item in range(5):
            key, level = f"{shard:05d}{item:04d}", 20 * (5 * shard + item)
            image = b"garbage" if (shard, item) == (0, 2) else jpeg_bytes(level)
            meta = {"key": key, "caption": f"json {level}", "url": f"http://x/{key}.jpg", "status": "success"}
            members.append((f"{key}.jpg", image))
            if (shard, item) != (1, 4):
                members.append((f"{key}.txt", f"caption {level}".encode()))
            members.append((f"{key}.json", json.dumps(meta).encode()))
        write_shard(tmp_path / f"{shard:05d}.tar", members)
    return str(tmp_path / "{00000..00001}.tar")


def test_shards_group_images_and_skip_corrupt_ones(shards):
    dataset = ImageTextShards(ImageTextConfig(shards, num_frames=3, size=(8, 12), shuffle_buffer=4))
    samples = list(dataset)
    assert len(samples) == 9 // 3 and dataset.num_skipped == 1
    images = []
    for sample in samples:
        assert sample["frames"].shape == (3, 8, 12, 3) and sample["is_image"] is True
        for level, caption in zip(levels(sample["frames"]), sample["meta"]["captions"]):
            assert caption in (f"caption {level}", f"json {level}")
            images.append(level)
    assert 20 * 9 in images and "json 180" in " ".join(s["caption"] for s in samples)  # json fallback used


def test_shards_split_across_dataloader_workers(shards):
    dataset = ImageTextShards(ImageTextConfig(shards, num_frames=2, size=8))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    # Each worker reads one shard: 4 readable images -> 2 samples, 5 -> 2 samples (1 left over).
    assert len(batches) == 4
    assert {batch["meta"][0]["worker"] for batch in batches} == {0, 1}


def test_shards_with_nothing_decodable_raise_instead_of_an_empty_epoch(tmp_path):
    write_shard(tmp_path / "bad.tar", [(f"{key}.jpg", b"garbage") for key in ("a", "b", "c")])
    (tmp_path / "not_a_tar.tar").write_bytes(b"\x00" * 10)
    for source in (str(tmp_path / "bad.tar"), str(tmp_path / "not_a_tar.tar")):
        dataset = ImageTextShards(ImageTextConfig(source, num_frames=2, size=8))
        with pytest.raises(RuntimeError, match="nothing decodable"):
            list(dataset)


@pytest.mark.parametrize("overrides", [{"num_frames": 0}, {"shuffle_buffer": 0}])
def test_bad_counts_are_rejected(image_folder, overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        ImageTextConfig(image_folder, **overrides)
