"""Bad input raises a clear ValueError naming the problem."""

import pytest
import torch

from wd_stpt import STPT, STPTCondition, STPTConfig, get_config


@pytest.fixture
def model(make_model):
    return make_model()


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (torch.zeros(1, 2, 3, 4, dtype=torch.long), "not divisible by patch_stride"),
        (torch.zeros(1, 2, 4, 5, dtype=torch.long), "not divisible by patch_stride"),
        (torch.full((1, 2, 4, 4), 17), r"must lie in \[0, 16\]"),
        (torch.full((1, 2, 4, 4), -1), r"must lie in \[0, 16\]"),
        (torch.zeros(2, 4, 4, dtype=torch.long), r"must be \(B, N, h, w\)"),
        (torch.zeros(1, 2, 4, 4), "must be int64"),
    ],
)
def test_bad_tokens(model, tokens, match):
    with pytest.raises(ValueError, match=match):
        model(tokens)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("text", torch.zeros(1, 3, 12), "text must be"),  # batch 1 != 2
        ("text", torch.zeros(2, 3, 11), "text must be"),  # text dim
        ("text_mask", torch.ones(2, 3, dtype=torch.bool), "text_mask given without text"),
        ("actions", torch.zeros(2, 3, 3), "actions must be"),  # 3 frames != 2
        ("actions", torch.zeros(2, 2, 2), "actions must be"),  # action dim
        ("is_image", torch.zeros(2), "is_image must be bool"),
        ("drop_prompt", torch.zeros(3, dtype=torch.bool), "drop_prompt must be bool"),
    ],
)
def test_bad_condition(model, field, value, match):
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(2, 2, 4, 4, dtype=torch.long), STPTCondition(**{field: value}))


def test_bad_text_mask(model):
    cond = STPTCondition(text=torch.zeros(2, 3, 12), text_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_mask must be bool"):
        model(torch.zeros(2, 2, 4, 4, dtype=torch.long), cond)


def test_bad_config():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        STPTConfig(width=30, num_heads=4)
    with pytest.raises(ValueError, match="conv must be one of"):
        get_config("tiny", conv="2d")
    with pytest.raises(ValueError, match="unknown STPT preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown STPTConfig fields"):
        STPTConfig.from_dict({"width": 8, "colour": 1})
    with pytest.raises(ValueError, match=r"unknown STPTConfig fields: \['widht'\]"):
        get_config("tiny", widht=32)
    assert STPTConfig.from_dict({"mlp_ratio": 2}).mlp_ratio == 2  # a JSON integer is a fine float
    for scale in ((0.1,), (0.1, 0.0), (0.1, float("inf")), (0.1, float("nan"))):
        with pytest.raises(ValueError, match="action_scale must be empty or 2 finite positive numbers"):
            STPTConfig(action_dim=2, action_scale=scale)
    for ratio in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="mlp_ratio must be a finite number > 0"):
            STPTConfig(mlp_ratio=ratio)
    with pytest.raises(TypeError, match="STPTConfig field width must be int, got '32'"):
        get_config("tiny", width="32")  # overrides are type-checked as config.json is
    for not_numbers in (0.1, "12", [True, 2.0]):
        with pytest.raises(ValueError, match="action_scale must be a sequence of numbers"):
            STPTConfig(action_scale=not_numbers)
    config = STPTConfig.from_dict({"action_dim": 2, "action_scale": [0.05, 10]})  # JSON lists, ints included
    assert config.action_scale == (0.05, 10.0) and STPTConfig.from_dict(config.to_dict()) == config


def test_presets(make_config):
    assert STPT(get_config("tiny")).config.codebook_size == 8192
    assert get_config("base").width == 512 and get_config("base").depth == 8
    with torch.device("meta"):
        count = sum(p.numel() for p in STPT(get_config("paper-1b")).parameters())
    assert 0.9e9 < count < 1.2e9


@pytest.mark.parametrize("shape", [(0, 2, 4, 4), (1, 0, 4, 4), (1, 2, 0, 4)])
def test_empty_tokens(model, shape):
    with pytest.raises(ValueError, match="must not be empty"):
        model(torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("text", torch.zeros(2, 3, 12, dtype=torch.long), ValueError, "text must be a float tensor"),
        ("actions", torch.zeros(2, 2, 3, dtype=torch.long), ValueError, "actions must be a float tensor"),
        ("is_image", [True, False], TypeError, "is_image must be a torch.Tensor"),
    ],
)
def test_bad_condition_types(model, field, value, error, match):
    with pytest.raises(error, match=match):
        model(torch.zeros(2, 2, 4, 4, dtype=torch.long), STPTCondition(**{field: value}))


def test_wrong_argument_types(model):
    with pytest.raises(TypeError, match="cond must be an STPTCondition"):
        model(torch.zeros(2, 2, 4, 4, dtype=torch.long), {"text": None})
    with pytest.raises(TypeError, match="tokens must be a torch.Tensor"):
        model([[[[0]]]])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([1, 2], "must be a dict"),
        ({"width": "64"}, "field width must be int"),
        ({"depth": True}, "field depth must be int"),
        ({"mlp_ratio": "4"}, "field mlp_ratio must be float"),
        ({"action_scale": 0.1}, "field action_scale must be a list of numbers"),
        ({"action_scale": ["0.1", 1]}, "field action_scale must be a list of numbers"),
    ],
)
def test_bad_config_dict(values, match):
    with pytest.raises(TypeError, match=match):
        STPTConfig.from_dict(values)
