import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_masking import masked_cross_entropy, prompt_dropout


def test_matches_cross_entropy_on_the_masked_positions():
    logits = torch.tensor([[[[[2.0, 0.0, -1.0], [0.0, 5.0, 0.0], [1.0, 1.0, 3.0]]]]])  # (1, 1, 1, 3, 3)
    targets = torch.tensor([[[[0, 2, 1]]]])
    masked = torch.tensor([[[[True, False, True]]]])
    loss, accuracy = masked_cross_entropy(logits, targets, masked)
    expected = F.cross_entropy(torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 3.0]]), torch.tensor([0, 1]))
    assert torch.allclose(loss, expected)
    assert accuracy.item() == 0.5
    smoothed, _ = masked_cross_entropy(logits, targets, masked, label_smoothing=0.1)
    expected = F.cross_entropy(
        torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 3.0]]), torch.tensor([0, 1]), label_smoothing=0.1
    )
    assert torch.allclose(smoothed, expected)


def test_label_smoothing_on_a_hand_example():
    # p = [3/4, 1/4] on the masked position; smoothing 0.1 over K = 2 aims at q = [0.95, 0.05].
    logits = torch.tensor([[[[[math.log(3.0), 0.0], [9.0, -9.0]]]]])
    targets = torch.tensor([[[[0, 1]]]])
    masked = torch.tensor([[[[True, False]]]])
    loss, accuracy = masked_cross_entropy(logits, targets, masked, label_smoothing=0.1)
    assert math.isclose(loss.item(), -(0.95 * math.log(0.75) + 0.05 * math.log(0.25)), rel_tol=1e-6)
    assert accuracy.item() == 1.0


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
    seed=st.integers(0, 10_000),
    label_smoothing=st.sampled_from([0.0, 0.1]),
)
def test_unmasked_positions_do_not_count(shape, seed, label_smoothing):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, 5, generator=generator, requires_grad=True)
    targets = torch.randint(0, 5, shape, generator=generator)
    masked = torch.rand(shape, generator=generator) < 0.5
    masked.view(-1)[0] = True
    loss, accuracy = masked_cross_entropy(logits, targets, masked, label_smoothing)
    noise = 100 * torch.randn(*shape, 5, generator=generator) * (~masked)[..., None]
    other = masked_cross_entropy(logits.detach() + noise, targets, masked, label_smoothing)
    assert torch.allclose(loss, other.loss) and accuracy == other.accuracy
    loss.backward()
    assert (logits.grad[~masked] == 0).all()


def test_loss_refuses_bad_input():
    logits, targets = torch.randn(1, 1, 2, 2, 4), torch.zeros(1, 1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="nothing to predict"):
        masked_cross_entropy(logits, targets, torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected logits"):
        masked_cross_entropy(logits, targets[0], torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="label_smoothing"):
        masked_cross_entropy(logits, targets, torch.ones(1, 1, 2, 2, dtype=torch.bool), label_smoothing=1.5)
    with pytest.raises(ValueError, match="masked must be bool"):
        masked_cross_entropy(logits, targets, torch.ones(1, 1, 2, 2))


def test_prompt_dropout_rate_and_seed():
    drop = prompt_dropout(20_000, generator=torch.Generator().manual_seed(0))
    assert drop.dtype == torch.bool and drop.shape == (20_000,)
    assert abs(drop.float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop, prompt_dropout(20_000, generator=torch.Generator().manual_seed(0)))
    assert not prompt_dropout(100, p=0.0).any() and prompt_dropout(100, p=1.0).all()
    with pytest.raises(ValueError, match="probability"):
        prompt_dropout(4, p=1.5)
