"""One model runs at the pre-training and the fine-tuning token grids."""

import torch

from wd_stpt import STPT
from wd_stpt.positions import FactorizedPositions


def test_one_model_runs_at_both_paper_shapes(make_config):
    torch.manual_seed(0)
    model = STPT(make_config(width=16, depth=1, num_heads=1, position_frames=16, position_height=16,
                             position_width=16)).eval()
    with torch.no_grad():
        for frames, height, width in [(16, 16, 16), (24, 12, 20)]:
            tokens = torch.randint(0, 17, (1, frames, height, width))
            logits = model(tokens)
            assert logits.shape == (1, frames, height, width, 16) and torch.isfinite(logits).all()


def test_positions_are_the_tables_at_their_size_and_interpolate_elsewhere():
    torch.manual_seed(0)
    positions = FactorizedPositions(8, frames=4, height=3, width=5)
    grid = positions(4, 3, 5)
    expected = positions.time[:, None, None] + positions.row[None, :, None] + positions.col[None, None, :]
    assert torch.equal(grid, expected)
    stretched = positions(7, 3, 5)  # time 4 -> 7: new frame i sits at old position i / 2
    for new, old in [(0, 0), (2, 1), (4, 2), (6, 3)]:
        torch.testing.assert_close(stretched[new], grid[old])
    torch.testing.assert_close(stretched[3], (grid[1] + grid[2]) / 2)
    assert len({tuple(frame.flatten().tolist()) for frame in stretched}) == 7  # every frame distinct
