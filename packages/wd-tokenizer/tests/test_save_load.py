import json

import pytest
import torch

from wd_tokenizer import VQGAN
from wd_tokenizer.model import load_state_dict_strict


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
    wrong_shape = (r"^checkpoint does not match the model: 3 wrong shape "
                   r"\['quantize.vq._codebook.cluster_size: \(1, 256\) != \(1, 128\)', '[^']*', '[^']*'\]$")
    with pytest.raises(ValueError, match=wrong_shape):
        VQGAN.from_pretrained(tmp_path)
    state = dict(tiny_model.state_dict())
    removed = sorted(key for key in state if key.startswith("decoder."))
    for key in removed:
        del state[key]
    # A wrong architecture misses hundreds of tensors: the message counts them and names the first three.
    first_three = rf"\['{removed[0]}', '[^']*', '[^']*', \.\.\.\]$"
    with pytest.raises(ValueError, match=rf"^checkpoint does not match the model: {len(removed)} missing {first_three}"):
        load_state_dict_strict(VQGAN(tiny_model.config), state)
    (tmp_path / "config.json").write_text(json.dumps({**config, "codebook_colour": "red"}))
    with pytest.raises(ValueError, match="codebook_colour"):
        VQGAN.from_pretrained(tmp_path)


def test_from_pretrained_errors_name_the_file(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="directory .*nowhere does not exist"):
        VQGAN.from_pretrained(tmp_path / "nowhere")
    directory = tmp_path / "tok"
    tiny_model.save_pretrained(directory)
    (directory / "model.safetensors").rename(tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found"):
        VQGAN.from_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"cannot read weights from .*model\.safetensors"):
        VQGAN.from_pretrained(directory)
    (directory / "config.json").write_text('{"hidden_channels": 16,')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        VQGAN.from_pretrained(directory)
    (directory / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        VQGAN.from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        VQGAN.from_pretrained(directory)
