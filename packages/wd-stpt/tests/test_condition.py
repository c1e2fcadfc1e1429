"""Prompts: padding and dropped prompts have no effect; absent parts work; conditions batch together."""

import pytest
import torch

from wd_stpt import STPTCondition


@pytest.fixture
def setup(make_model, random_tokens, dims):
    text_dim, action_dim = dims
    model = make_model(depth=2)
    tokens = random_tokens(2, 3, 4, 4)
    generator = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, text_dim, generator=generator)
    actions = torch.randn(2, 3, action_dim, generator=generator)
    text_mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    return model, tokens, text, text_mask, actions


def test_text_padding_values_have_no_effect(setup):
    model, tokens, text, text_mask, actions = setup
    garbage = text.clone()
    garbage[0, 3:] = torch.randn(2, text.shape[2]) * 100
    expected = model(tokens, STPTCondition(text=text, text_mask=text_mask, actions=actions))
    assert torch.equal(expected, model(tokens, STPTCondition(text=garbage, text_mask=text_mask, actions=actions)))
    unpadded = model(tokens[:1], STPTCondition(text=text[:1, :3], actions=actions[:1]))
    torch.testing.assert_close(expected[:1], unpadded, atol=1e-5, rtol=1e-5)


def test_prompt_changes_the_output(setup):
    model, tokens, text, text_mask, actions = setup
    with_prompt = model(tokens, STPTCondition(text=text, text_mask=text_mask, actions=actions))
    assert not torch.allclose(with_prompt, model(tokens, STPTCondition(text=text, text_mask=text_mask)))
    assert not torch.allclose(with_prompt, model(tokens, STPTCondition(actions=actions)))


def test_dropped_prompt_ignores_prompt_values(setup):
    model, tokens, text, text_mask, actions = setup
    drop = torch.tensor([True, False])
    out = model(tokens, STPTCondition(text=text, text_mask=text_mask, actions=actions, drop_prompt=drop))
    other = model(tokens, STPTCondition(text=-3 * text, text_mask=text_mask, actions=actions + 5, drop_prompt=drop))
    assert torch.equal(out[0], other[0])
    assert not torch.allclose(out[1], other[1])
    torch.testing.assert_close(out[:1], model(tokens[:1]), atol=1e-5, rtol=1e-5)  # dropped == no prompt at all


def test_fully_padded_text_is_unconditional(setup):
    model, tokens, text, _, _ = setup
    empty = torch.zeros(2, 5, dtype=torch.bool)
    torch.testing.assert_close(model(tokens, STPTCondition(text=text, text_mask=empty)), model(tokens),
                               atol=1e-5, rtol=1e-5)


def test_guidance_batch_matches_separate_calls(setup):
    model, tokens, text, text_mask, actions = setup
    cond = STPTCondition(text=text, text_mask=text_mask, actions=actions, is_image=torch.tensor([False, True]))
    uncond = cond.unconditional()
    assert uncond.drop_prompt.tolist() == [True, True] and uncond.text is text
    both = model(torch.cat([tokens, tokens]), cond.concat(uncond))
    torch.testing.assert_close(both[:2], model(tokens, cond), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[2:], model(tokens, uncond), atol=1e-5, rtol=1e-5)


def test_concat_fills_missing_fields_and_pads_text(dims):
    text_dim, _ = dims
    short = STPTCondition(text=torch.randn(1, 2, text_dim))
    long = STPTCondition(text=torch.randn(2, 4, text_dim), drop_prompt=torch.tensor([True, False]))
    both = short.concat(long)
    assert both.text.shape == (3, 4, text_dim)
    assert both.text_mask.tolist() == [[True, True, False, False], [True] * 4, [True] * 4]
    assert both.drop_prompt.tolist() == [False, True, False]
    assert both.is_image is None and both.actions is None
    image = STPTCondition(text=torch.randn(1, 2, text_dim), is_image=torch.tensor([True]))
    assert short.concat(image).is_image.tolist() == [False, True]
    assert STPTCondition().concat(STPTCondition()) == STPTCondition()
    with pytest.raises(ValueError, match="text/actions"):
        short.concat(STPTCondition(drop_prompt=torch.tensor([True])))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_non_finite_or_huge_masked_prompt_values_have_no_effect(setup, value):
    """A zero attention weight does not cancel NaN/inf, and 1e30 overflows the LayerNorm: masked values
    must never reach the arithmetic at all."""
    model, tokens, text, text_mask, actions = setup
    drop = torch.tensor([False, True])
    expected = model(tokens, STPTCondition(text=text, text_mask=text_mask, actions=actions, drop_prompt=drop))
    bad_text, bad_actions = text.clone(), actions.clone()
    bad_text[0, 3:] = value  # padding of the kept sample
    bad_text[1], bad_actions[1] = value, value  # everything of the dropped sample
    out = model(tokens, STPTCondition(text=bad_text, text_mask=text_mask, actions=bad_actions, drop_prompt=drop))
    assert torch.equal(out, expected)


def test_prompts_of_another_float_dtype_are_accepted(setup):
    model, tokens, text, text_mask, actions = setup
    expected = model(tokens, STPTCondition(text=text, text_mask=text_mask, actions=actions))
    out = model(tokens, STPTCondition(text=text.double(), text_mask=text_mask, actions=actions.double()))
    torch.testing.assert_close(out, expected)


def test_action_scale_divides_the_actions(make_model, random_tokens, dims):
    _, action_dim = dims
    scale = [0.1, 10.0, 2.0][:action_dim]
    scaled, plain = make_model(seed=4, action_scale=scale), make_model(seed=4)
    tokens, actions = random_tokens(2, 3, 4, 4), torch.randn(2, 3, action_dim)
    expected = plain(tokens, STPTCondition(actions=actions / torch.tensor(scale)))
    torch.testing.assert_close(scaled(tokens, STPTCondition(actions=actions)), expected, atol=1e-5, rtol=1e-5)
    dropped = STPTCondition(actions=actions, drop_prompt=torch.tensor([True, True]))
    torch.testing.assert_close(scaled(tokens, dropped), plain(tokens), atol=1e-5, rtol=1e-5)
