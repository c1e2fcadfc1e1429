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


@pytest.mark.parametrize("spoil", ["image", "caption"])
def test_a_group_with_a_bad_image_or_caption_is_skipped_whole(image_folder, spoil):
    """No image serves two samples of an epoch: a spoilt group gives way to the next group, not to borrowed images."""
    if spoil == "image":
        (image_folder / "004.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    else:
        (image_folder / "004.txt").write_bytes(b"caf\xe9 au lait")
    dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=2, size=8))
    position = [dataset.images[image].name for image in dataset._order(0)].index("004.jpg")
    spoilt = position // 2  # the 10 images make 5 groups of 2
    sample = dataset[spoilt]
    assert sample["meta"]["num_skipped"] == 1 and sample["meta"]["index"] == (spoilt + 1) % len(dataset)
    reason = "cannot decode image" if spoil == "image" else "004.txt: caption is not UTF-8"
    assert dataset.num_skipped == 1 and reason in dataset.skips.reasons[0]
    groups = [tuple(dataset[index]["meta"]["paths"]) for index in range(len(dataset))]
    assert len(set(groups)) == 4 and "004" not in str(groups)  # the spoilt group gave way to the next one


def test_folder_shuffle_depends_on_seed_and_epoch(image_folder):
    def first_group(seed, epoch):
        dataset = ImageFolderDataset(ImageTextConfig(image_folder, num_frames=3, size=8, seed=seed))
        dataset.set_epoch(epoch)
        return dataset[0]["meta"]["paths"]

    assert first_group(0, 0) == first_group(0, 0)
    assert len({tuple(first_group(seed, epoch)) for seed in range(3) for epoch in range(2)}) > 1


@pytest.mark.parametrize("overrides", [{"num_frames": 0}])
def test_bad_counts_are_rejected(image_folder, overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        ImageTextConfig(image_folder, **overrides)
