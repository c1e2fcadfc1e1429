import dataclasses
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_tokenizer import PRESETS, VQGAN, get_config


def test_open_muse_preset_has_its_parameter_count():
    with torch.device("meta"):
        model = VQGAN(get_config("open-muse-f16-8192"))
    assert sum(p.numel() for p in model.parameters()) == 146_244_675
    assert model.downsample_factor == 16 and model.codebook_size == 8192
    assert model.quantize.embedding.weight.shape == (8192, 64)


# The CPU-sized presets and their downsampling factors.
SMALL_PRESETS = {"f4-small": 4, "f4-patch": 4, "f8-small": 8, "f16-small": 16}


# Levels from 3, the least VQGANConfig takes (vector-quantize-pytorch's FSQ needs its symmetric variant for 2).
@given(levels=st.lists(st.integers(3, 8), min_size=1, max_size=4), preset=st.sampled_from(sorted(SMALL_PRESETS)))
@settings(max_examples=20, deadline=None)
def test_config_codebook_size_is_the_quantizers(levels, preset):
    """The size a config promises (what callers read without building a model) is the one its quantizer has."""
    fsq = get_config(preset, quantizer="fsq", fsq_levels=levels)
    for config in (get_config(preset), fsq):
        assert config.codebook_size == VQGAN(config).codebook_size
    assert fsq.codebook_size == int(torch.tensor(levels).prod())


@pytest.mark.parametrize("name,factor", SMALL_PRESETS.items())
def test_small_presets_are_cpu_sized(name, factor):
    model = VQGAN(get_config(name))
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.downsample_factor == factor


def test_get_config_copies_and_rejects_unknown_names():
    config = get_config("f8-small", num_embeddings=512)
    config.channel_mult.append(8)
    assert PRESETS["f8-small"].channel_mult == [1, 2, 2, 4] and config.num_embeddings == 512
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("f32-huge")


@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5))
def test_round_trip_shapes(tiny_model, batch, h, w):
    f = tiny_model.downsample_factor
    pixels = torch.rand(batch, 3, h * f, w * f)
    ids = tiny_model.encode(pixels)
    assert ids.shape == (batch, h, w) and ids.dtype == torch.int64
    assert 0 <= ids.min() and ids.max() < tiny_model.codebook_size
    decoded = tiny_model.decode(ids)
    assert decoded.shape == pixels.shape and 0.0 <= decoded.min() and decoded.max() <= 1.0


@settings(max_examples=6, deadline=None)
@given(h=st.integers(4, 20), w=st.integers(4, 20))
def test_sizes_not_divisible_by_the_factor_are_refused(tiny_model, h, w):
    if h % 4 == 0 and w % 4 == 0:
        return
    with pytest.raises(ValueError, match="divisible by the downsample factor 4"):
        tiny_model.encode(torch.rand(1, 3, h, w))


def test_bad_inputs_are_refused(tiny_model):
    with pytest.raises(ValueError, match="float pixels"):
        tiny_model.encode(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="MASK"):
        tiny_model.decode(torch.full((1, 2, 2), tiny_model.codebook_size))
    with pytest.raises(ValueError, match="uint8 frames"):
        tiny_model.encode_video(torch.rand(2, 8, 8, 3))


def test_encode_is_deterministic(tiny_model):
    pixels = torch.rand(2, 3, 16, 16)
    first = tiny_model.encode(pixels)
    assert torch.equal(first, tiny_model.encode(pixels))
    assert torch.equal(first[1:], tiny_model.encode(pixels[1:]))


def test_video_api_matches_frame_api_whatever_the_chunk(tiny_model, synthetic_clip):
    frames = synthetic_clip[:5]
    pixels = frames.permute(0, 3, 1, 2).float() / 255.0
    ids = tiny_model.encode(pixels)
    assert torch.equal(tiny_model.encode_video(frames, chunk_size=2), ids)
    assert torch.equal(tiny_model.encode_video(frames.numpy(), chunk_size=16), ids)
    video = tiny_model.decode_video(ids, chunk_size=3)
    expected = (tiny_model.decode(ids) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert video.dtype == torch.uint8 and torch.equal(video, expected)


@pytest.mark.parametrize("quantizer", ["l2", "vq", "fsq", "lfq"])
def test_codes_from_ids_equal_the_quantized_latents(tiny_config, quantizer):
    torch.manual_seed(0)
    model = VQGAN(dataclasses.replace(tiny_config, quantizer=quantizer, fsq_levels=[8, 5, 5, 5])).eval()
    quantized, ids, _ = model.quantize(model.latents(torch.rand(2, 3, 16, 16)))
    assert ids.shape == (2, 4, 4) and int(ids.max()) < model.codebook_size
    torch.testing.assert_close(model.quantize.codes(ids), quantized, atol=1e-5, rtol=1e-5)


def test_l2_lookup_is_the_exact_nearest_code():
    torch.manual_seed(0)
    model = VQGAN(get_config("f8-small", quantizer="l2", num_embeddings=64, embed_dim=8))
    codes = model.quantize.embedding.weight
    z = torch.randn(2, 8, 3, 5)
    brute = ((z.permute(0, 2, 3, 1)[..., None, :] - codes) ** 2).sum(-1).argmin(-1)
    assert torch.equal(model.quantize.lookup(z), brute)


def test_pixel_range_is_applied_in_one_place(tiny_config):
    signed = VQGAN(tiny_config)
    assert signed.to_model_range(torch.tensor([0.0, 1.0])).tolist() == [-1.0, 1.0]
    unit = VQGAN(dataclasses.replace(tiny_config, pixel_range="unit"))
    assert unit.to_model_range(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="pixel_range"):
        get_config("f8-small", pixel_range="imagenet")


def test_import_leaves_torchmetrics_and_vector_quantize_pytorch_unloaded():
    # Both take seconds to import; encoding with an open-muse-style (l2) model needs neither.
    code = (
        "import sys, torch, wd_tokenizer\n"
        "tok = wd_tokenizer.VQGAN(wd_tokenizer.get_config('f8-small', quantizer='l2')).eval()\n"
        "tok.decode(tok.encode(torch.rand(1, 3, 8, 8)))\n"
        "print(sorted(m for m in ('torchmetrics', 'vector_quantize_pytorch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_video_api_edge_cases(tiny_model, synthetic_clip):
    f = tiny_model.downsample_factor
    empty = tiny_model.encode_video(synthetic_clip[:0])
    assert empty.shape == (0, 32 // f, 32 // f) and empty.dtype == torch.int64
    assert tiny_model.decode_video(empty).shape == (0, 32, 32, 3)
    ids = tiny_model.encode_video(synthetic_clip[:3], chunk_size=2)
    # Token caches store uint16: numpy uint16 ids decode like int64 ones.
    assert torch.equal(tiny_model.decode_video(ids.numpy().astype("uint16"), chunk_size=2),
                       tiny_model.decode_video(ids))
    with pytest.raises(ValueError, match="chunk_size"):
        tiny_model.encode_video(synthetic_clip, chunk_size=0)
    with pytest.raises(ValueError, match="divisible by the downsample factor"):
        tiny_model.encode_video(torch.zeros(0, 30, 32, 3, dtype=torch.uint8))
    masked = ids.clone()
    masked[1, 0, 0] = tiny_model.codebook_size
    with pytest.raises(ValueError, match=rf"got \[\d+, {tiny_model.codebook_size}\]; the \[MASK\] id"):
        tiny_model.decode_video(masked, chunk_size=2)
    with pytest.raises(ValueError, match="integer ids"):
        tiny_model.decode_video(ids.float())


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_patch_encoder_codes_each_patch_alone(row, col, seed):
    """Two images that share one 4x4 patch, with anything elsewhere, give that patch the same latent and id (the conv
    encoder's receptive field and GroupNorm would not), and a plain image gets one id everywhere."""
    torch.manual_seed(0)
    model = VQGAN(get_config("f4-patch")).eval()
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.rand(2, 1, 3, 16, 16, generator=generator)
    second[..., 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = first[..., 4 * row : 4 * row + 4, 4 * col : 4 * col + 4]
    latents = [model.latents(image) for image in (first, second)]
    torch.testing.assert_close(latents[0][..., row, col], latents[1][..., row, col])
    assert model.encode(first)[0, row, col] == model.encode(second)[0, row, col]
    assert not torch.allclose(latents[0], latents[1])  # the rest differs
    plain = torch.full((1, 3, 16, 16), 0.1)
    assert model.encode(plain).unique().numel() == 1


def test_patch_preset_round_trips_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = VQGAN(get_config("f4-patch")).eval()
    model.save_pretrained(tmp_path)
    loaded = VQGAN.from_pretrained(tmp_path)
    pixels = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.encode(pixels), model.encode(pixels))
