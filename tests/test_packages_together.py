"""The packages meet only at the contracts in docs/design.md: check that they fit end to end on tiny parts."""

from __future__ import annotations

import pytest
import torch
from wd_data.collate import collate_samples
from wd_data.synthetic import DriveConfig, DriveDataset, ShapesConfig, ShapesWorld
from wd_masking import (
    SamplerConfig,
    action_to_video,
    apply_mask,
    image_to_video,
    masked_cross_entropy,
    sample,
    sample_training_mask,
)
from wd_stpt import STPT, STPTCondition, get_config
from wd_tokenizer import VQGAN
from wd_tokenizer import get_config as get_tokenizer_config


@pytest.fixture(scope="module")
def tokenizer() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(get_tokenizer_config("f8-small")).eval()


@pytest.fixture(scope="module")
def backbone(tokenizer: VQGAN) -> STPT:
    torch.manual_seed(0)
    return STPT(get_config("tiny", codebook_size=tokenizer.codebook_size, text_dim=16)).eval()


def test_image_to_video_from_pixels_to_pixels(tokenizer: VQGAN, backbone: STPT) -> None:
    """world clip -> ids -> task mask -> guided sampling with STPT -> pixels; the given frame is kept."""
    clip = ShapesWorld(ShapesConfig(height=32, width=32, num_frames=4)).render(seed=3)
    with torch.no_grad():
        ids = tokenizer.encode_video(clip.frames)  # (N, h, w)
        tokens, known = image_to_video(ids[None, :1], num_frames=4, mask_id=tokenizer.codebook_size)
        cond = STPTCondition(text=torch.randn(1, 3, 16), text_mask=torch.tensor([[True, True, False]]))
        calls: list[int] = []

        def model_fn(batch_tokens: torch.Tensor, batch_cond: STPTCondition) -> torch.Tensor:
            calls.append(batch_tokens.shape[0])
            return backbone(batch_tokens, batch_cond)

        result = sample(
            model_fn, tokens, known, mask_id=tokenizer.codebook_size, cond=cond, uncond=cond.unconditional(),
            config=SamplerConfig(steps=3, guidance_scale=2.0), generator=torch.Generator().manual_seed(0),
        )
        video = tokenizer.decode_video(result.tokens[0])
    assert calls == [2, 2, 2]  # one batched call per step, conditional and unconditional together
    assert torch.equal(result.tokens[0, 0], ids[0])
    assert int(result.tokens.max()) < tokenizer.codebook_size
    assert video.shape == (4, 32, 32, 3) and video.dtype == torch.uint8


def test_a_training_step_on_collated_drive_clips(tokenizer: VQGAN, backbone: STPT) -> None:
    """collate -> tokenize -> training mask -> STPT with actions and a dropped prompt -> masked loss -> grads."""
    dataset = DriveDataset(DriveConfig(height=32, width=32, num_frames=4), seeds=range(2))
    batch = collate_samples([dataset[0], dataset[1]])
    with torch.no_grad():
        targets = torch.stack([tokenizer.encode_video(frames) for frames in batch["frames"]])
    generator = torch.Generator().manual_seed(0)
    mask = sample_training_mask(*targets.shape, generator=generator)
    # Classifier-free guidance training: the second sample's prompt is dropped.
    cond = STPTCondition(actions=batch["actions"], is_image=batch["is_image"], drop_prompt=torch.tensor([False, True]))
    model = STPT(backbone.config).train()
    logits = model(apply_mask(targets, mask, tokenizer.codebook_size), cond)
    loss = masked_cross_entropy(logits, targets, mask).loss
    loss.backward()
    assert torch.isfinite(loss)
    # The first sample's actions reached the network: their MLP gets a gradient.
    assert model.prompt.action_mlp[0].weight.grad.abs().sum() > 0


def test_action_to_video_keeps_the_first_frame(tokenizer: VQGAN, backbone: STPT) -> None:
    clip = ShapesWorld(ShapesConfig(height=32, width=32, num_frames=1)).render(seed=5)
    with torch.no_grad():
        first = tokenizer.encode_video(clip.frames)  # (1, h, w)
        tokens, known = action_to_video(first, num_frames=3, mask_id=tokenizer.codebook_size)
        cond = STPTCondition(actions=torch.tensor([[[0.05, 5.0], [0.05, 5.0], [0.05, 5.0]]]))
        result = sample(backbone, tokens, known, mask_id=tokenizer.codebook_size, cond=cond,
                        config=SamplerConfig(steps=2), generator=torch.Generator().manual_seed(1))
    assert torch.equal(result.tokens[0, 0], first[0])
    assert not known[0, 1:].any()
