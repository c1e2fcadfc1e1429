from dataclasses import dataclass

import pytest
import torch

from wd_masking import ConcatenableCondition, concat_conditions


@dataclass
class Prompt:
    text: torch.Tensor

    def concat(self, other: "Prompt") -> "Prompt":
        return Prompt(torch.cat([self.text, other.text]))


def test_none_tensors_and_objects_are_batched():
    assert concat_conditions(None, None) is None
    merged = concat_conditions(torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.equal(merged, torch.cat([torch.ones(2, 3), torch.zeros(2, 3)]))
    prompt = concat_conditions(Prompt(torch.ones(2, 4)), Prompt(torch.zeros(2, 4)))
    assert isinstance(prompt, ConcatenableCondition)
    assert torch.equal(prompt.text[:2], torch.ones(2, 4)) and torch.equal(prompt.text[2:], torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("cond", "uncond"),
    [
        (torch.ones(1), None),
        (None, torch.ones(1)),
        ({"a": 1}, {"a": 0}),
        (Prompt(torch.ones(1)), torch.ones(1)),
    ],
)
def test_mismatched_conditions_are_refused(cond, uncond):
    with pytest.raises(TypeError, match="cannot batch conditions"):
        concat_conditions(cond, uncond)
