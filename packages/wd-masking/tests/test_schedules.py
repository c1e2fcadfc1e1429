import pytest
import torch

from wd_masking import SCHEDULES, get_schedule

INTEGRALS = {"cosine": 2 / torch.pi, "linear": 1 / 2, "square": 2 / 3, "cube": 3 / 4}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_runs_from_all_masked_to_none_and_decreases(name):
    schedule = get_schedule(name)
    ratios = torch.linspace(0, 1, 1001, dtype=torch.float64)
    values = schedule(ratios)
    assert values[0] == 1 and abs(float(values[-1])) < 1e-12
    assert (values[1:] < values[:-1]).all()
    assert abs(float(values.mean()) - INTEGRALS[name]) < 1e-3


def test_cosine_is_maskgit_cos():
    assert torch.allclose(get_schedule("cosine")(torch.tensor([0.5])), torch.tensor([2**-0.5]))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        get_schedule("exp")
