import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_masking import (
    SCHEDULES,
    MaskMixture,
    apply_mask,
    box_mask,
    prefix_frames_mask,
    sample_training_mask,
    shared_frame_mask,
)

INTEGRALS = {"cosine": 2 / torch.pi, "linear": 1 / 2, "square": 2 / 3, "cube": 3 / 4}
GRIDS = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 7), st.integers(1, 7))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _is_box(spatial: torch.Tensor) -> bool:
    """True if the bool (h, w) mask is one non-empty axis-aligned rectangle."""
    if not spatial.any():
        return False
    rows, cols = spatial.any(dim=1), spatial.any(dim=0)
    contiguous = all(
        int(line.nonzero().max() - line.nonzero().min()) + 1 == int(line.sum()) for line in (rows, cols)
    )
    return contiguous and torch.equal(spatial, rows[:, None] & cols[None, :])


@settings(max_examples=40, deadline=None)
@given(grid=GRIDS, seed=st.integers(0, 10_000), schedule=st.sampled_from(sorted(SCHEDULES)))
def test_shared_mask_is_the_same_on_every_frame_and_masks_1_to_hw(grid, seed, schedule):
    _, _, height, width = grid
    mask = shared_frame_mask(*grid, schedule, _generator(seed))
    assert mask.shape == grid and mask.dtype == torch.bool
    assert torch.equal(mask, mask[:, :1].expand_as(mask))
    counts = mask[:, 0].flatten(1).sum(1)
    assert ((counts >= 1) & (counts <= height * width)).all()
    assert torch.equal(mask, shared_frame_mask(*grid, schedule, _generator(seed)))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_mean_masked_fraction_is_the_schedule_integral(schedule):
    mask = shared_frame_mask(4000, 1, 16, 16, schedule, _generator(0))
    assert abs(mask.float().mean().item() - INTEGRALS[schedule]) < 0.02


def test_masked_count_is_maskgit_rule():
    # r is drawn first: replay it to check count = max(1, round(cos(pi/2 r) h w)).
    ratio = torch.rand(500, generator=_generator(7))
    expected = (torch.cos(ratio * torch.pi / 2) * 30).round().clamp(min=1)
    mask = shared_frame_mask(500, 2, 5, 6, "cosine", _generator(7))
    assert torch.equal(mask[:, 0].flatten(1).sum(1).float(), expected)


@settings(max_examples=40, deadline=None)
@given(grid=GRIDS, seed=st.integers(0, 10_000))
def test_prefix_mask_shows_the_first_frames_and_shares_the_rest(grid, seed):
    num_frames = grid[1]
    mask = prefix_frames_mask(*grid, generator=_generator(seed))
    for sample in mask:
        visible = [not bool(frame.any()) for frame in sample]
        num_known = visible.index(False) if False in visible else num_frames
        assert num_known == 0 if num_frames == 1 else 1 <= num_known <= num_frames - 1
        assert all(torch.equal(frame, sample[num_known]) for frame in sample[num_known:])


@settings(max_examples=40, deadline=None)
@given(grid=GRIDS, seed=st.integers(0, 10_000))
def test_box_mask_is_one_rectangle_shared_by_all_frames(grid, seed):
    mask = box_mask(*grid, generator=_generator(seed))
    assert torch.equal(mask, mask[:, :1].expand_as(mask))
    assert all(_is_box(sample[0]) for sample in mask)


def test_paper_mixture_is_the_shared_mask_alone():
    mask = sample_training_mask(300, 4, 4, 4, MaskMixture.paper(), _generator(0))
    assert torch.equal(mask, mask[:, :1].expand_as(mask))
    assert (mask.flatten(2).any(2)).all()
    assert not all(_is_box(sample[0]) for sample in mask)


def test_mixture_components_are_selected_by_weight():
    prefix_only = sample_training_mask(200, 4, 4, 4, MaskMixture(shared=0, prefix=1, box=0), _generator(0))
    assert not prefix_only[:, 0].any() and prefix_only[:, -1].flatten(1).any(1).all()
    box_only = sample_training_mask(200, 4, 4, 4, MaskMixture(shared=0, prefix=0, box=1), _generator(0))
    assert all(_is_box(sample[0]) for sample in box_only)
    default = sample_training_mask(2000, 4, 4, 4, generator=_generator(0))
    first_frame_visible = (~default[:, 0].flatten(1).any(1)).float().mean().item()
    assert abs(first_frame_visible - 0.1) < 0.03
    assert torch.equal(default, sample_training_mask(2000, 4, 4, 4, generator=_generator(0)))
    assert not torch.equal(default, sample_training_mask(2000, 4, 4, 4, generator=_generator(1)))


def test_apply_mask_replaces_exactly_the_masked_tokens():
    tokens = torch.randint(0, 10, (2, 3, 4, 4), generator=_generator(0))
    mask = shared_frame_mask(2, 3, 4, 4, generator=_generator(0))
    masked = apply_mask(tokens, mask, 10)
    assert (masked[mask] == 10).all() and torch.equal(masked[~mask], tokens[~mask])
    with pytest.raises(ValueError, match="mask must be bool"):
        apply_mask(tokens, mask[0], 10)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="weights"):
        MaskMixture(shared=-1)
    with pytest.raises(ValueError, match="weights"):
        MaskMixture(shared=0, prefix=0, box=0)
    for weight in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            MaskMixture(prefix=weight)
    with pytest.raises(ValueError, match="unknown schedule"):
        MaskMixture(schedule="exp")
    with pytest.raises(ValueError, match=">= 1"):
        shared_frame_mask(1, 0, 4, 4)
