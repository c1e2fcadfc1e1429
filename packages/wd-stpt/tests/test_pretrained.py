"""save_pretrained / from_pretrained round trip."""

import json
import os
import stat

import pytest
import torch
from safetensors import SafetensorError

from wd_stpt import STPT, STPTCondition


def test_round_trip_is_bit_exact(tmp_path, make_model, random_tokens, dims):
    model = make_model(seed=3, conv="factorized", depth=3, action_scale=[0.5, 2.0, 4.0])
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


def _edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda d: (d / "model.safetensors").unlink(), FileNotFoundError, "has no model.safetensors"),
        (lambda d: (d / "config.json").unlink(), FileNotFoundError, "has no config.json"),
        (lambda d: (d / "config.json").write_text("{width: 3"), ValueError, "config.json is not valid JSON"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), ValueError, "not a readable safetensors"),
        (lambda d: _edit_config(d, colour=1), ValueError, r"config.json: unknown STPTConfig fields: \['colour'\]"),
        (lambda d: _edit_config(d, width="32"), ValueError, "config.json: STPTConfig field width must be int"),
        (lambda d: _edit_config(d, width=64), ValueError,
         r"does not match its config.json: embed.weight is \(17, 32\), config.json needs \(17, 64\)"),
        (lambda d: _edit_config(d, depth=3), ValueError, "does not match its config.json: missing blocks.2."),
        (lambda d: _edit_config(d, depth=1), ValueError, "does not match its config.json: unexpected blocks.1."),
    ],
)
def test_load_errors_name_the_problem(tmp_path, make_model, damage, error, match):
    make_model().save_pretrained(tmp_path)
    damage(tmp_path)
    with pytest.raises(error, match=match) as caught:
        STPT.from_pretrained(tmp_path)
    assert "\n" not in str(caught.value) and str(caught.value).count(";") <= 2  # one line, at most 3 problems


def test_saved_files_have_the_umask_mode_and_a_failed_write_names_the_file(tmp_path, make_model, monkeypatch):
    previous = os.umask(0o022)
    try:
        make_model(seed=0).save_pretrained(tmp_path / "stpt")
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "stpt").iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644}

    def full_disk(state, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("wd_stpt.model.save_file", full_disk)
    with pytest.raises(OSError, match=r"^cannot write .*stpt/model\.safetensors: Error while serializing"):
        make_model(seed=1).save_pretrained(tmp_path / "stpt")
    assert sorted(p.name for p in (tmp_path / "stpt").iterdir()) == ["config.json", "model.safetensors"]
