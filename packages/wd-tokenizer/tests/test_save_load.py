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
    wrong_shape = (r"model\.safetensors: checkpoint does not match the model: 3 wrong shape "
                   r"\['quantize.vq._codebook.cluster_size: \(1, 256\) != \(1, 128\)', '[^']*', '[^']*'\]$")
    with pytest.raises(ValueError, match=wrong_shape):
        VQGAN.from_pretrained(tmp_path)
    state = dict(tiny_model.state_dict())
    removed = sorted(key for key in state if key.startswith("decoder."))
    for key in removed:
        del state[key]
    # A wrong architecture misses hundreds of tensors: the message counts them and names the first three.
    first_three = rf"\['{removed[0]}', '[^']*', '[^']*', \.\.\.\]$"
    missing = rf"^checkpoint does not match the model: {len(removed)} missing {first_three}"
    with pytest.raises(ValueError, match=missing):
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


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hidden_channels", "32", "VQGANConfig.hidden_channels must be an integer, got '32'"),
    ("hidden_channels", 8.5, "VQGANConfig.hidden_channels must be an integer, got 8.5"),
    ("no_attn_mid_block", 1, "VQGANConfig.no_attn_mid_block must be true or false, got 1"),
    ("channel_mult", [1, "2"], "VQGANConfig.channel_mult must be list[int]"),
    ("channel_mult", 2, "VQGANConfig.channel_mult must be list[int]"),
    ("dropout", float("nan"), "VQGANConfig.dropout must be a finite number, got nan"),
    ("commitment_weight", "0.25", "VQGANConfig.commitment_weight must be a finite number"),
    ("quantizer", "pq", "VQGANConfig.quantizer must be Literal"),
    ("fsq_levels", [8, True], "VQGANConfig.fsq_levels must be"),
    ("norm_groups", 0, "norm_groups out of range"),
    ("channel_mult", [], "channel_mult out of range"),
    ("dropout", 1.0, "dropout must be in [0, 1)"),
    ("fsq_levels", [8, 1], "fsq_levels must be a non-empty list of levels >= 3"),
    ("fsq_levels", [8, 2], "fsq_levels must be a non-empty list of levels >= 3"),
])
def test_config_json_types_and_ranges_are_one_line_errors_naming_the_file(tiny_model, tmp_path, field, value,
                                                                          message):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError) as raised:
        VQGAN.from_pretrained(tmp_path)
    text = str(raised.value)
    assert text.startswith(f"{tmp_path / 'config.json'}: ") and message in text and "\n" not in text


def test_a_config_far_larger_than_its_weights_fails_before_building_the_model(tiny_model, tmp_path, monkeypatch):
    """hidden_channels 4096 would allocate gigabytes; the shapes (a meta build, the file's header) say no first."""
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_channels": 4096, "norm_groups": 8}))
    built = []
    monkeypatch.setattr(VQGAN, "__init__", lambda self, config: built.append(config))
    too_large = r"model\.safetensors: checkpoint does not match the model: \d+ wrong shape \[.*, \.\.\.\]"
    with pytest.raises(ValueError, match=too_large):
        VQGAN.from_pretrained(tmp_path)
    assert built == []
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_embeddings": 2**30}))
    with pytest.raises(ValueError, match="a codebook of 1073741824 codes is past MAX_CODEBOOK"):
        VQGAN.from_pretrained(tmp_path)
