from __future__ import annotations

import pytest
import torch

from wd_data.collate import collate_samples


def sample(num_frames=3, actions=True, text_length=None, is_image=False, caption="c"):
    return {
        "frames": torch.randint(0, 256, (num_frames, 8, 8, 3), dtype=torch.uint8),
        "caption": caption,
        "actions": torch.randn(num_frames, 2) if actions else None,
        "is_image": is_image,
        "meta": {"id": caption},
        **({"text": torch.randn(text_length, 4)} if text_length is not None else {}),
    }


def test_stacks_frames_actions_and_flags():
    samples = [sample(caption="a"), sample(caption="b", is_image=True)]
    batch = collate_samples(samples)
    assert batch["frames"].shape == (2, 3, 8, 8, 3) and batch["frames"].dtype == torch.uint8
    assert torch.equal(batch["frames"][1], samples[1]["frames"])
    assert torch.equal(batch["actions"], torch.stack([s["actions"] for s in samples]))
    assert batch["is_image"].tolist() == [False, True] and batch["is_image"].dtype == torch.bool
    assert batch["caption"] == ["a", "b"] and batch["meta"] == [{"id": "a"}, {"id": "b"}]
    assert "text" not in batch


def test_actions_none_when_no_sample_has_them():
    assert collate_samples([sample(actions=False), sample(actions=False)])["actions"] is None


def test_mixed_actions_raise():
    with pytest.raises(ValueError, match="actions"):
        collate_samples([sample(actions=True), sample(actions=False)])


def test_text_is_right_padded_with_a_mask():
    samples = [sample(text_length=2), sample(text_length=5), sample(text_length=1)]
    batch = collate_samples(samples)
    assert batch["text"].shape == (3, 5, 4) and batch["text_mask"].shape == (3, 5)
    assert batch["text_mask"].sum(dim=1).tolist() == [2, 5, 1]
    for row, s in enumerate(samples):
        length = s["text"].shape[0]
        assert torch.equal(batch["text"][row, :length], s["text"])
        assert batch["text"][row, length:].abs().sum() == 0


def test_own_text_mask_is_kept():
    padded = sample(text_length=4)
    padded["text_mask"] = torch.tensor([True, True, False, False])
    batch = collate_samples([padded, sample(text_length=3)])
    assert batch["text_mask"].tolist() == [[True, True, False, False], [True, True, True, False]]


def test_tokens_are_stacked():
    samples = [
        {"tokens": torch.randint(0, 10, (2, 4, 4)), "caption": "", "actions": None, "is_image": False, "meta": {}}
    ] * 2
    batch = collate_samples(samples)
    assert batch["tokens"].shape == (2, 2, 4, 4) and "frames" not in batch


@pytest.mark.parametrize(
    "samples",
    [
        [],
        [sample(num_frames=3), sample(num_frames=4)],
        [sample(text_length=2), sample()],
        [{"caption": "", "actions": None, "is_image": False, "meta": {}}],
    ],
)
def test_inconsistent_batches_raise(samples):
    with pytest.raises(ValueError):
        collate_samples(samples)
