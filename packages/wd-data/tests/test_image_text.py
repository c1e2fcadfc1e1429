from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from wd_data.datasets.image_text import ImageFolderDataset, ImageTextConfig


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


def test_folder_skips_an_image_whose_caption_is_not_utf8(image_folder):
    (image_folder / "003.txt").write_bytes(b"caf\xe9 au lait")
    dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=9, size=8))
    sample = dataset[0]
    assert sorted(level // 20 for level in levels(sample["frames"])) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert dataset.num_skipped == 1 and "003.txt: caption is not UTF-8" in dataset.skips.reasons[0]


@pytest.mark.parametrize("overrides", [{"num_frames": 0}])
def test_bad_counts_are_rejected(image_folder, overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        ImageTextConfig(image_folder, **overrides)
