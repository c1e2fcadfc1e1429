import json

import pytest
import torch

from wd_tokenizer import VQGAN


def test_save_load_round_trip_is_bit_exact(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = VQGAN.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config
    original = tiny_model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    for key, tensor in loaded.state_dict().items():
        assert tensor.dtype == original[key].dtype and torch.equal(tensor, original[key]), key
    pixels = torch.rand(2, 3, 16, 16)
    ids = tiny_model.encode(pixels)
    assert torch.equal(loaded.encode(pixels), ids)
    assert torch.equal(loaded.decode(ids), tiny_model.decode(ids))


def test_from_pretrained_refuses_mismatches(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_embeddings": 128}))
    with pytest.raises(KeyError, match="wrong shape"):
        VQGAN.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "codebook_colour": "red"}))
    with pytest.raises(ValueError, match="codebook_colour"):
        VQGAN.from_pretrained(tmp_path)
