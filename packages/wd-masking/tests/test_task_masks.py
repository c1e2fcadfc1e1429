import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_masking import (
    action_to_video,
    box_region,
    frame_interpolation,
    image_to_video,
    inpainting,
    outpainting,
    stylization,
    text_to_video,
)

MASK = 50


def _video(shape=(2, 4, 3, 5), seed=0) -> torch.Tensor:
    return torch.randint(0, MASK, shape, generator=torch.Generator().manual_seed(seed))


def test_text_to_video_knows_nothing():
    tokens, known = text_to_video(2, 3, 4, 5, MASK)
    assert tokens.shape == known.shape == (2, 3, 4, 5)
    assert (tokens == MASK).all() and not known.any()


def test_image_to_video_knows_the_first_frames():
    prompt = _video((2, 2, 3, 5))
    tokens, known = image_to_video(prompt, 6, MASK)
    assert tokens.shape == (2, 6, 3, 5)
    assert torch.equal(tokens[:, :2], prompt) and known[:, :2].all()
    assert (tokens[:, 2:] == MASK).all() and not known[:, 2:].any()
    with pytest.raises(ValueError, match="given frames"):
        image_to_video(prompt, 1, MASK)


def test_action_to_video_knows_the_first_frame_only():
    first = _video((2, 3, 5))
    tokens, known = action_to_video(first, 4, MASK)
    assert torch.equal(tokens[:, 0], first) and known[:, 0].all() and not known[:, 1:].any()


@settings(max_examples=20, deadline=None)
@given(keys=st.integers(2, 5), every=st.integers(2, 4))
def test_interpolation_places_the_keyframes_every_k_frames(keys, every):
    keyframes = _video((2, keys, 3, 5))
    tokens, known = frame_interpolation(keyframes, every, MASK)
    assert tokens.shape == (2, (keys - 1) * every + 1, 3, 5)
    is_key = torch.arange(tokens.shape[1]) % every == 0
    assert torch.equal(tokens[:, is_key], keyframes) and known[:, is_key].all()
    assert (tokens[:, ~is_key] == MASK).all() and not known[:, ~is_key].any()


def test_interpolation_needs_two_keyframes_and_a_gap():
    with pytest.raises(ValueError, match="at least 2 keyframes"):
        frame_interpolation(_video((1, 1, 3, 5)), 3, MASK)
    with pytest.raises(ValueError, match="every >= 2"):
        frame_interpolation(_video((1, 3, 3, 5)), 1, MASK)


def test_outpainting_keeps_only_tokens_whose_cell_lies_inside():
    video = _video((1, 2, 4, 6))
    tokens, known = outpainting(video, (2, 4, 8, 10), MASK, downsample_factor=2)  # pixels of an 8 x 12 frame
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1:4, 2:5] = True  # cells [2, 8) x [4, 10) in pixels
    assert torch.equal(known, expected.expand_as(video))
    assert torch.equal(tokens[known], video[known]) and (tokens[~known] == MASK).all()
    _, cut = outpainting(video, (3, 3, 7, 9), MASK, downsample_factor=2)  # cells the box cuts are regenerated
    assert cut[0, 0].sum() == 2 and cut[0, 0, 2, 2:4].all()
    with pytest.raises(ValueError, match="nothing to outpaint"):
        outpainting(video, (0, 0, 8, 12), MASK, downsample_factor=2)


def test_inpainting_on_the_token_grid():
    video = _video()
    region = box_region(3, 5, (1, 2, 3, 4))
    tokens, known = inpainting(video, region, MASK)
    assert torch.equal(known, ~region.expand_as(video))
    assert (tokens[~known] == MASK).all() and torch.equal(tokens[known], video[known])
    per_frame = torch.zeros(4, 3, 5, dtype=torch.bool)
    per_frame[2, 0, 0] = True
    _, known = inpainting(video, per_frame, MASK)
    assert (~known).sum() == 2 and not known[:, 2, 0, 0].any()


@settings(max_examples=30, deadline=None)
@given(
    factor=st.integers(1, 4),
    corners=st.tuples(st.integers(0, 11), st.integers(0, 19), st.integers(1, 12), st.integers(1, 20)),
)
def test_a_pixel_box_marks_every_token_cell_it_touches(factor, corners):
    height, width = 3 * factor, 5 * factor
    top, left = min(corners[0], height - 1), min(corners[1], width - 1)
    bottom, right = min(max(corners[2], top + 1), height), min(max(corners[3], left + 1), width)
    video = _video()
    _, known = inpainting(video, box_region(height, width, (top, left, bottom, right)), MASK, factor)
    for row in range(3):
        for col in range(5):
            touched = (top < (row + 1) * factor and row * factor < bottom
                       and left < (col + 1) * factor and col * factor < right)
            assert bool(known[0, 0, row, col]) != touched
    assert torch.equal(known, known[:1, :1].expand_as(known))


def test_inpainting_refuses_a_region_of_the_wrong_size():
    with pytest.raises(ValueError, match="downsample_factor 16"):
        inpainting(_video(), torch.ones(40, 80, dtype=torch.bool), MASK, downsample_factor=16)
    with pytest.raises(ValueError, match="does not match video"):
        inpainting(_video(), torch.ones(3, 3, 5, dtype=torch.bool), MASK)
    with pytest.raises(ValueError, match="box"):
        box_region(3, 5, (2, 0, 1, 5))


@settings(max_examples=30, deadline=None)
@given(fraction=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_stylization_masks_the_asked_fraction(fraction, seed):
    video = _video()
    tokens, known = stylization(video, fraction, MASK, torch.Generator().manual_seed(seed))
    assert ((~known).flatten(1).sum(1) == round(fraction * 60)).all()
    assert (tokens[~known] == MASK).all() and torch.equal(tokens[known], video[known])
    again, _ = stylization(video, fraction, MASK, torch.Generator().manual_seed(seed))
    assert torch.equal(tokens, again)
    with pytest.raises(ValueError, match="mask_fraction"):
        stylization(video, 1.5, MASK)
