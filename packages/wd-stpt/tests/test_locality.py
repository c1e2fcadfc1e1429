"""Window locality and image mode: what may and may not influence each output."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wd_stpt import STPTCondition

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _window_ids(height: int, width: int, stride: int) -> torch.Tensor:
    """(h, w) -> index of the window each token belongs to."""
    rows = torch.arange(height) // (height // stride)
    cols = torch.arange(width) // (width // stride)
    return rows[:, None] * stride + cols[None, :]


@SETTINGS
@given(frame=st.integers(0, 2), row=st.integers(0, 7), col=st.integers(0, 3), stride=st.sampled_from([2, 4]),
       seed=st.integers(0, 100))
def test_one_layer_without_conv_is_window_local(make_model, random_tokens, frame, row, col, stride, seed):
    model = make_model(seed=seed, depth=1, conv="none", patch_stride=stride)
    tokens = random_tokens(1, 3, 8, 4, seed=seed)
    changed = tokens.clone()
    changed[0, frame, row, col] = (tokens[0, frame, row, col] + 1) % (model.config.codebook_size + 1)
    before, after = model(tokens), model(changed)
    windows = _window_ids(8, 4, stride)
    own = windows == windows[row, col]  # (h, w); the window spans every frame
    assert torch.equal(before[:, :, ~own], after[:, :, ~own])
    assert not torch.equal(before[:, :, own], after[:, :, own])


def test_conv_crosses_windows(make_model, random_tokens):
    """Sanity check of the test above: with the 3D conv on, information does leave the window."""
    model = make_model(depth=1, conv="depthwise")
    tokens = random_tokens(1, 2, 4, 4)
    changed = tokens.clone()
    changed[0, 0, 1, 1] = (tokens[0, 0, 1, 1] + 1) % 17
    assert not torch.equal(model(tokens)[:, :, 2, 2], model(changed)[:, :, 2, 2])


@SETTINGS
@given(depth=st.integers(1, 4), conv=st.sampled_from(["depthwise", "factorized", "full"]), frame=st.integers(0, 3),
       seed=st.integers(0, 100))
def test_image_mode_keeps_frames_independent(make_model, random_tokens, depth, conv, frame, seed):
    """Sample 0 is an image batch, sample 1 a video: editing frame j of either shows where information flows."""
    model = make_model(seed=seed, depth=depth, conv=conv)
    tokens = random_tokens(2, 4, 4, 4, seed=seed)
    cond = STPTCondition(is_image=torch.tensor([True, False]))
    others = torch.arange(4) != frame
    before = model(tokens, cond)
    for sample in (0, 1):
        changed = tokens.clone()
        changed[sample, frame] = (tokens[sample, frame] + 1) % 17
        after = model(changed, cond)
        assert torch.equal(before[1 - sample], after[1 - sample])  # samples never mix
        assert not torch.equal(before[sample, frame], after[sample, frame])
        frames_equal = torch.equal(before[sample, others], after[sample, others])
        assert frames_equal == (sample == 0)  # image: other frames untouched; video: they change


def test_all_image_batch_equals_per_frame_runs(make_model, random_tokens):
    """An image batch of N frames gives, frame by frame, the logits of N one-frame videos (up to float error)."""
    model = make_model(depth=3)
    tokens = random_tokens(1, 3, 4, 4)
    # One-frame runs see frame index 0's time embedding, so compare with positions made frame-independent.
    with torch.no_grad():
        model.positions.time.zero_()
    batched = model(tokens, STPTCondition(is_image=torch.tensor([True])))
    single = torch.cat([model(tokens[:, [n]]) for n in range(3)], dim=1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_all_video_flags_build_no_image_mask(make_model, random_tokens):
    """is_image all False must cost nothing: no (B, 1, L, L) mask (SDPA keeps its fast path), no second conv."""
    model = make_model(depth=2)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append((args[2], args[3])))
    tokens = random_tokens(2, 3, 4, 4)
    out = model(tokens, STPTCondition(is_image=torch.tensor([False, False])))
    assert seen == [(None, None)]
    assert torch.equal(out, model(tokens))
