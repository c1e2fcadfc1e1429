"""`model.init_from` (init_weights_from): fine-tuning at a longer clip grows the time table (learned extension),
at a shorter one cuts it, and weights that do not fit are a one-line ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from wd_stpt import STPT
from wd_stpt import get_config as stpt_config

from wd_cli.train.checkpoint import init_weights_from
from wd_cli.train.configfile import ConfigError


def _stpt(**overrides) -> STPT:
    torch.manual_seed(len(overrides))
    return STPT(stpt_config("tiny", **{"codebook_size": 16, "text_dim": 8, "width": 32, "num_heads": 2} | overrides))


@pytest.mark.parametrize("frames", [2, 5, 8])
def test_init_from_fits_the_time_table_to_the_new_clip_length(tmp_path: Path, frames: int) -> None:
    pretrained = _stpt(position_frames=5)
    pretrained.save_pretrained(tmp_path / "stpt")
    model = _stpt(position_frames=frames)
    init_weights_from(model, tmp_path)  # a pipeline-like directory holding stpt/
    table, old = model.positions.time, pretrained.positions.time
    assert torch.equal(table[: min(frames, 5)], old[: min(frames, 5)])
    assert torch.equal(table[5:], old[-1:].expand(max(0, frames - 5), -1))  # new rows start as the last one
    assert torch.equal(model.head.weight, pretrained.head.weight)


def test_init_from_weights_of_another_width_is_one_line(tmp_path: Path) -> None:
    _stpt(position_frames=5).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"model.init_from: cannot load") as error:
        init_weights_from(_stpt(position_frames=5, width=64, num_heads=4), tmp_path)
    assert "\n" not in str(error.value)
