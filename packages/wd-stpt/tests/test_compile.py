"""The block compiles without graph breaks; bf16 autocast and activation checkpointing work."""

import pytest
import torch

from wd_stpt import STPT, STPTCondition
from wd_stpt.condition import PromptEmbedding
from wd_stpt.layers import STPTBlock, image_attention_mask


@pytest.mark.parametrize("image", [False, True])
def test_block_compiles_fullgraph(make_config, dims, image):
    torch.manual_seed(0)
    config = make_config()
    block, prompt_embedding = STPTBlock(config), PromptEmbedding(config)
    text_dim, action_dim = dims
    cond = STPTCondition(text=torch.randn(2, 3, text_dim), actions=torch.randn(2, 2, action_dim),
                         drop_prompt=torch.tensor([False, True]))
    prompt = prompt_embedding(cond, 2, 2)
    is_image = torch.tensor([True, False])
    frame_mask = image_attention_mask(is_image, 2, 4) if image else None
    video = ~is_image if image else None
    x = torch.randn(2, 2, 4, 4, config.width)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, prompt, frame_mask, video), block(x, prompt, frame_mask, video))


def test_bf16_autocast_matches_float32(make_model, random_tokens):
    model = make_model(depth=3)
    tokens = random_tokens(2, 2, 4, 4)
    cond = STPTCondition(is_image=torch.tensor([True, False]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens, cond)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(tokens, cond), atol=0.05, rtol=0.05)


def test_activation_checkpointing_gives_the_same_gradients(make_config, random_tokens):
    tokens = random_tokens(1, 2, 4, 4)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = STPT(make_config(depth=3, activation_checkpointing=checkpointing)).train()
        model(tokens).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_activation_checkpointing_under_bf16_autocast(make_config, random_tokens, dims):
    """The recomputed forward must run under the same autocast state, so gradients match exactly."""
    text_dim, action_dim = dims
    tokens = random_tokens(2, 2, 4, 4)
    generator = torch.Generator().manual_seed(0)
    cond = STPTCondition(text=torch.randn(2, 3, text_dim, generator=generator),
                         actions=torch.randn(2, 2, action_dim, generator=generator),
                         is_image=torch.tensor([True, False]))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = STPT(make_config(depth=3, activation_checkpointing=checkpointing)).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens, cond)
        assert logits.dtype == torch.bfloat16
        logits.float().square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed, atol=0, rtol=0)
