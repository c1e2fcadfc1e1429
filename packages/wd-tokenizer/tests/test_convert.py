import json

import pytest
import torch

from wd_tokenizer import VQGAN, VQGANConfig, detect_layout, from_checkpoint, from_diffusers_vqmodel, from_open_muse

OPEN_MUSE_CONFIG = {
    "_class_name": "VQGANModel",
    "_version": "0.0.1",
    "resolution": 32,
    "num_channels": 3,
    "hidden_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 2,
    "decoder_res_blocks": None,
    "extra_mid_res_blocks": None,
    "decoder_hidden_channels": None,
    "decoder_channel_mult": None,
    "attn_resolutions": [16],
    "no_attn_mid_block": False,
    "z_channels": 8,
    "num_embeddings": 32,
    "quantized_embed_dim": 4,
    "dropout": 0.0,
    "resample_with_conv": True,
    "commitment_cost": 0.25,
}
# Names from open-muse's modeling_taming_vqgan.py that a strict load depends on.
OPEN_MUSE_KEYS = [
    "encoder.conv_in.weight",
    "encoder.down.0.block.1.norm2.bias",
    "encoder.down.0.downsample.conv.weight",
    "encoder.down.1.block.0.nin_shortcut.weight",
    "encoder.down.1.attn.1.proj_out.weight",
    "encoder.mid.block_1.conv1.weight",
    "encoder.mid.attn_1.q.weight",
    "encoder.mid.block_2.norm1.weight",
    "encoder.norm_out.weight",
    "encoder.conv_out.bias",
    "quant_conv.weight",
    "quantize.embedding.weight",
    "post_quant_conv.bias",
    "decoder.conv_in.weight",
    "decoder.mid.attn_1.k.weight",
    "decoder.up.1.block.2.conv2.weight",
    "decoder.up.1.attn.2.v.bias",
    "decoder.up.1.upsample.conv.weight",
    "decoder.up.0.block.0.nin_shortcut.weight",
    "decoder.norm_out.bias",
    "decoder.conv_out.weight",
]


class NotATensor:
    """A pickled object `weights_only=True` must refuse."""


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every tensor so GroupNorm affines and biases are non-trivial (a wrong mapping shows)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


@pytest.fixture
def open_muse_dir(tmp_path):
    config = VQGANConfig(
        hidden_channels=32, channel_mult=[1, 2], num_res_blocks=2, resolution=32, attn_resolutions=[16],
        no_attn_mid_block=False, z_channels=8, embed_dim=4, num_embeddings=32, pixel_range="unit", quantizer="l2",
    )
    torch.manual_seed(0)
    reference = randomised(VQGAN(config))
    (tmp_path / "config.json").write_text(json.dumps(OPEN_MUSE_CONFIG))
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    return tmp_path, reference


def test_open_muse_checkpoint_loads_strictly_and_identically(open_muse_dir):
    directory, reference = open_muse_dir
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    assert set(OPEN_MUSE_KEYS) <= set(state)
    model = from_open_muse(directory)
    assert model.config.pixel_range == "unit" and model.codebook_size == 32
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    pixels = torch.rand(2, 3, 32, 32)
    ids = model.encode(pixels)
    assert torch.equal(ids, reference.encode(pixels))
    assert torch.equal(model.decode(ids), reference.decode(ids))


def test_open_muse_errors_name_the_problem(open_muse_dir):
    directory, reference = open_muse_dir
    state = reference.state_dict()
    state["encoder.extra.weight"] = state.pop("encoder.conv_in.weight")
    torch.save(state, directory / "pytorch_model.bin")
    mismatch = r"1 missing \['encoder.conv_in.weight'\]; 1 unexpected \['encoder.extra.weight'\]"
    with pytest.raises(ValueError, match=mismatch):
        from_open_muse(directory)
    (directory / "config.json").write_text(json.dumps({**OPEN_MUSE_CONFIG, "decoder_res_blocks": 3}))
    with pytest.raises(ValueError, match="decoder_res_blocks"):
        from_open_muse(directory)
    (directory / "config.json").write_text(json.dumps({**OPEN_MUSE_CONFIG, "num_res_blocks": 1}))
    with pytest.raises(ValueError, match="skips level attention"):
        from_open_muse(directory)
    (directory / "config.json").write_text(json.dumps({**OPEN_MUSE_CONFIG, "spectral_norm": True}))
    with pytest.raises(ValueError, match="spectral_norm"):
        from_open_muse(directory)


@pytest.mark.parametrize("mid_attention", [False, True])
def test_diffusers_vqmodel_converts_to_the_same_ids_and_pixels(tmp_path, mid_attention):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    # aMUSEd's VQ structure (plain encoder/decoder blocks, no attention, vq_embed_dim from latent_channels), shrunk.
    vq = diffusers.VQModel(
        block_out_channels=[32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, latent_channels=16, num_vq_embeddings=64,
        norm_num_groups=32, mid_block_add_attention=mid_attention, lookup_from_codebook=True, force_upcast=True,
    )
    vq = randomised(vq)
    vq.save_pretrained(tmp_path)
    model = from_diffusers_vqmodel(tmp_path)
    assert model.downsample_factor == 4 and model.config.embed_dim == 16

    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = vq.encode(pixels).latents
        expected_ids = vq.quantize(latents)[2][2]
        batch, channels, h, w = latents.shape
        expected = vq.decode(expected_ids, force_not_quantize=True, shape=(batch, h, w, channels)).sample
    ids = model.encode(pixels)
    assert expected_ids.unique().numel() > 8  # the comparison covers many codes
    assert torch.equal(ids.flatten(), expected_ids)
    torch.testing.assert_close(model.latents(pixels), latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.decode(ids), expected.clamp(0, 1), atol=1e-5, rtol=0)


def test_diffusers_unsupported_blocks_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "down_block_types": ["AttnDownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"],
    }))
    with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
        from_diffusers_vqmodel(tmp_path)


def test_converters_name_missing_and_malformed_files(open_muse_dir, tmp_path):
    directory, _ = open_muse_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_open_muse(directory / "absent")
    torch.save({"encoder.conv_in.weight": [1.0]}, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match="name -> tensor dict"):
        from_open_muse(directory)
    torch.save({"encoder.conv_in.weight": NotATensor()}, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match="Python objects other than tensors, refused"):
        from_open_muse(directory)
    (directory / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: the file is empty or cut short"):
        from_open_muse(directory)
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights .*pytorch_model\.bin"):
        from_open_muse(directory)
    vq_dir = tmp_path / "vq"
    vq_dir.mkdir()
    # An AutoencoderKL has the same block types but no codebook.
    (vq_dir / "config.json").write_text(json.dumps({
        "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"],
        "block_out_channels": [32], "layers_per_block": 1, "latent_channels": 4,
    }))
    with pytest.raises(ValueError, match=r"not a diffusers VQModel config: it lacks \['num_vq_embeddings'\]"):
        from_diffusers_vqmodel(vq_dir)


def test_from_checkpoint_detects_the_layout_and_finds_a_pipelines_vqvae(open_muse_dir, tmp_path):
    directory, reference = open_muse_dir
    pixels = torch.rand(1, 3, 32, 32)
    assert detect_layout(directory) == "open-muse"
    assert torch.equal(from_checkpoint(directory).encode(pixels), reference.encode(pixels))
    # Without `_class_name` the open-muse-only key `quantized_embed_dim` still tells the layout.
    (directory / "config.json").write_text(json.dumps({k: v for k, v in OPEN_MUSE_CONFIG.items() if k[0] != "_"}))
    assert detect_layout(directory) == "open-muse"
    pipeline = tmp_path / "pipeline"
    (pipeline / "vqvae").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "vqvae" / "config.json").write_text(json.dumps({"_class_name": "VQModel", "num_vq_embeddings": 4}))
    assert detect_layout(pipeline / "vqvae") == "diffusers"
    with pytest.raises(ValueError, match=r"pipeline/vqvae is in the diffusers layout, not open-muse"):
        from_checkpoint(pipeline, layout="open-muse")
    with pytest.raises(ValueError, match="layout must be one of"):
        from_checkpoint(directory, layout="taming")


@pytest.mark.parametrize(("config", "message"), [
    ({"_class_name": "AutoencoderKL"}, r"_class_name 'AutoencoderKL' is neither open-muse's VQGANModel nor"),
    ({"model_type": "t5", "d_model": 16}, r"describes a transformers 't5' model, not a VQGAN"),
    ({"hidden_channels": 32, "pixel_range": "unit"}, r"is already a wd-tokenizer VQGAN directory"),
    ({"hidden_size": 32}, r"is neither an open-muse VQGANModel config nor a diffusers VQModel config"),
])
def test_detect_layout_refuses_other_directories(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        detect_layout(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        detect_layout(tmp_path)
