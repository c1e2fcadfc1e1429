"""save_pretrained / from_pretrained round trip."""

import json

import torch

from wd_stpt import STPT, STPTCondition


def test_round_trip_is_bit_exact(tmp_path, make_model, random_tokens, dims):
    model = make_model(seed=3, conv="factorized", depth=3)
    model.save_pretrained(tmp_path / "stpt")
    assert sorted(p.name for p in (tmp_path / "stpt").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "stpt" / "config.json").read_text())["conv"] == "factorized"
    loaded = STPT.from_pretrained(tmp_path / "stpt").eval()
    assert loaded.config == model.config
    for (name, tensor), (loaded_name, loaded_tensor) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == loaded_name and torch.equal(tensor, loaded_tensor)
    text_dim, action_dim = dims
    cond = STPTCondition(text=torch.randn(1, 2, text_dim), actions=torch.randn(1, 2, action_dim))
    tokens = random_tokens(1, 2, 4, 4)
    assert torch.equal(model(tokens, cond), loaded(tokens, cond))


def test_save_overwrites_in_place(tmp_path, make_model):
    make_model(seed=0).save_pretrained(tmp_path)
    second = make_model(seed=1)
    second.save_pretrained(tmp_path)
    loaded = STPT.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.weight, second.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
