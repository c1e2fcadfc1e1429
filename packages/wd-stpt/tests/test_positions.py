"""Positions: a clip of k frames reads the first k time rows (cut, never stretched) unless it is longer than the
table, rows and columns interpolate, the time table grows for fine-tuning at longer clips, and one model runs at
the pre-training and fine-tuning grids."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_stpt import STPT
from wd_stpt.positions import TIME_TABLE, FactorizedPositions, fit_time_table


def test_one_model_runs_at_both_paper_shapes(make_config):
    torch.manual_seed(0)
    model = STPT(make_config(width=16, depth=1, num_heads=1, position_frames=16, position_height=16,
                             position_width=16)).eval()
    with torch.no_grad():
        for frames, height, width in [(16, 16, 16), (24, 12, 20)]:
            tokens = torch.randint(0, 17, (1, frames, height, width))
            logits = model(tokens)
            assert logits.shape == (1, frames, height, width, 16) and torch.isfinite(logits).all()


def _grid(positions: FactorizedPositions, time: torch.Tensor) -> torch.Tensor:
    return time[:, None, None] + positions.row[None, :, None] + positions.col[None, None, :]


@settings(max_examples=30, deadline=None)
@given(table=st.integers(1, 9), frames=st.integers(1, 20))
def test_time_positions_are_the_cut_table(table: int, frames: int):
    torch.manual_seed(table)
    positions = FactorizedPositions(8, frames=table, height=3, width=5)
    grid = positions(frames, 3, 5)
    assert grid.shape == (frames, 3, 5, 8)
    if frames <= table:  # frame i reads row i, whatever the clip's length: a window means the same everywhere
        assert torch.equal(grid, _grid(positions, positions.time[:frames]))
        assert torch.equal(positions(table, 3, 5)[:frames], grid)
    else:  # only a clip longer than the table stretches it, first and last rows at its ends
        assert torch.equal(grid[0], _grid(positions, positions.time[:1])[0])
        torch.testing.assert_close(grid[-1], _grid(positions, positions.time[-1:])[0])


def test_rows_and_columns_interpolate():
    torch.manual_seed(0)
    positions = FactorizedPositions(8, frames=2, height=4, width=3)
    grid, wider = positions(2, 4, 3), positions(2, 4, 5)  # columns 3 -> 5: new column j sits at old j / 2
    for new, old in [(0, 0), (2, 1), (4, 2)]:
        torch.testing.assert_close(wider[:, :, new], grid[:, :, old])
    torch.testing.assert_close(wider[:, :, 1], (grid[:, :, 0] + grid[:, :, 1]) / 2)


def test_fit_time_table_cuts_or_grows_by_repeating_the_last_row(make_model):
    state = make_model(position_frames=3).state_dict()
    grown = fit_time_table(state, 5)
    assert torch.equal(grown[TIME_TABLE][:3], state[TIME_TABLE])
    assert torch.equal(grown[TIME_TABLE][3:], state[TIME_TABLE][2:].expand(2, -1))
    assert torch.equal(fit_time_table(state, 2)[TIME_TABLE], state[TIME_TABLE][:2])
    assert fit_time_table(state, 3) is state
    longer = make_model(position_frames=5)
    longer.load_state_dict(grown)  # a 3-frame model starts a 5-frame fine-tuning with its own weights
    assert all(torch.equal(longer.state_dict()[name], tensor) for name, tensor in grown.items())


def test_a_grown_model_predicts_as_before_on_clips_the_old_table_held(make_model, random_tokens):
    short = make_model(position_frames=3)
    longer = make_model(position_frames=6)
    longer.load_state_dict(fit_time_table(short.state_dict(), 6))
    with torch.no_grad():
        for frames in (1, 2, 3):
            tokens = random_tokens(1, frames, 4, 4)
            torch.testing.assert_close(longer(tokens), short(tokens))
