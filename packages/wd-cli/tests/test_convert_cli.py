"""`wd convert`: public VQGAN and T5 checkpoints into parts with the source's ids and embeddings, pipelines assembled
from parts exactly as `save_pretrained` writes them, and every mistake one line."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from sentencepiece import SentencePieceProcessor
import torch
from click.testing import CliRunner, Result
from wd_stpt import STPT
from wd_stpt import get_config as stpt_config
from wd_tokenizer import VQGAN, VQGANConfig

from wd_cli import text_encoders
from wd_cli.main import cli
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.text_encoders import HashTextEncoder, T5TextEncoder, load_text_encoder
from wd_cli.train import DataSection, ModelSection, SourceConfig, STPTRunConfig
from wd_cli.train.configfile import dump_yaml

SENTENCES = ["a red circle moves up", "a blue square moves down and bounces", "a green triangle moves left"]
PROMPTS = ["a red circle moves down", "", "green squares bounce"]
# An open-muse VQGANModel config (the fields its modeling_taming_vqgan.py saves), shrunk.
OPEN_MUSE_CONFIG = {
    "_class_name": "VQGANModel", "_version": "0.0.1", "resolution": 32, "num_channels": 3, "hidden_channels": 32,
    "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "no_attn_mid_block": False,
    "z_channels": 8, "quantized_embed_dim": 4, "num_embeddings": 32, "dropout": 0.0, "resample_with_conv": True,
    "commitment_cost": 0.25,
}


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def one_line_error(result: Result) -> str:
    """The single `Error: ...` line a user mistake ends with (exit 1, no traceback)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- VQGAN ------------------------------------------------------------------------------------------------------


@pytest.fixture
def open_muse_dir(tmp_path: Path) -> tuple[Path, VQGAN]:
    """An open-muse directory (config.json + pytorch_model.bin) and the model its weights came from (open-muse
    names its modules as we do, so our VQGAN with its config stands in for open-muse's class)."""
    torch.manual_seed(0)
    reference = VQGAN(VQGANConfig(
        hidden_channels=32, channel_mult=[1, 2], num_res_blocks=1, resolution=32, no_attn_mid_block=False,
        z_channels=8, embed_dim=4, num_embeddings=32, norm_groups=32, pixel_range="unit", quantizer="l2")).eval()
    directory = tmp_path / "vqgan-open-muse"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(OPEN_MUSE_CONFIG))
    torch.save(reference.state_dict(), directory / "pytorch_model.bin")
    return directory, reference


def test_open_muse_converts_to_a_tokenizer_with_the_same_ids(open_muse_dir, tmp_path):
    source, reference = open_muse_dir
    result = invoke("convert", "tokenizer", source, tmp_path / "tokenizer")
    assert result.exit_code == 0, result.output
    assert "VQGAN with 32 codes, 2x downsampling" in result.output
    converted = VQGAN.from_pretrained(tmp_path / "tokenizer")
    pixels = torch.rand(4, 3, 32, 32)
    ids = converted.encode(pixels)
    assert ids.unique().numel() > 4  # the comparison covers several codes
    assert torch.equal(ids, reference.encode(pixels))
    assert torch.equal(converted.decode(ids), reference.decode(ids))


def test_an_amused_vqmodel_converts_to_the_same_ids(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vq = diffusers.VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=8, num_vq_embeddings=64,
        norm_num_groups=32, lookup_from_codebook=True, force_upcast=True).eval()
    vq.save_pretrained(tmp_path / "amused" / "vqvae")  # as in a diffusers pipeline: amused-256/vqvae
    (tmp_path / "amused" / "model_index.json").write_text(json.dumps({"_class_name": "AmusedPipeline"}))
    result = invoke("convert", "tokenizer", tmp_path / "amused", tmp_path / "tokenizer")
    assert result.exit_code == 0, result.output
    converted = VQGAN.from_pretrained(tmp_path / "tokenizer")
    pixels = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = vq.quantize(vq.encode(pixels).latents)[2][2]
    assert expected.unique().numel() > 4
    assert torch.equal(converted.encode(pixels).flatten(), expected)


def test_tokenizer_mistakes_end_in_one_line(open_muse_dir, tiny_t5_dir, tmp_path):
    source, reference = open_muse_dir
    out = tmp_path / "tokenizer"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty/config.json not found" in one_line_error(invoke("convert", "tokenizer", empty, out))
    assert "describes a transformers 't5' model, not a VQGAN" in one_line_error(
        invoke("convert", "tokenizer", tiny_t5_dir, out))
    assert "is in the open-muse layout, not diffusers" in one_line_error(
        invoke("convert", "tokenizer", source, out, "--layout", "diffusers"))
    reference.save_pretrained(tmp_path / "ours")
    assert "is already a wd-tokenizer VQGAN directory" in one_line_error(
        invoke("convert", "tokenizer", tmp_path / "ours", out))

    (source / "config.json").write_text(json.dumps({**OPEN_MUSE_CONFIG, "num_embeddings": 64}))
    error = one_line_error(invoke("convert", "tokenizer", source, out))
    assert "checkpoint does not match the model: 1 wrong shape ['quantize.embedding.weight: (32, 4) != (64, 4)']" \
        in error
    (source / "config.json").write_text(json.dumps({**OPEN_MUSE_CONFIG, "_class_name": "AutoencoderKL"}))
    assert "_class_name 'AutoencoderKL' is neither" in one_line_error(invoke("convert", "tokenizer", source, out))
    (source / "config.json").write_text(json.dumps(OPEN_MUSE_CONFIG))
    (source / "pytorch_model.bin").rename(source / "diffusion_model.ckpt")
    assert "no weights in" in one_line_error(invoke("convert", "tokenizer", source, out))
    assert not out.exists()  # nothing half-written


def test_an_existing_out_needs_overwrite(open_muse_dir, tmp_path):
    source, _ = open_muse_dir
    out = tmp_path / "tokenizer"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("convert", "tokenizer", source, out)
    assert result.exit_code == 2 and "exists; pass --overwrite to replace it" in result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert invoke("convert", "tokenizer", source, out, "--overwrite").exit_code == 0
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors"]


# -- T5 ---------------------------------------------------------------------------------------------------------


def train_spiece() -> bytes:
    """A unigram sentencepiece model trained on SENTENCES with T5's special ids (pad 0, </s> 1, <unk> 2)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=model, vocab_size=40, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2)
    return model.getvalue()


def write_published_t5(directory: Path, spiece: bytes, vocab_size: int) -> torch.nn.Module:
    """A whole T5 (encoder and decoder, v1.1 style) saved as t5-v1_1 is published: config.json,
    pytorch_model.bin and spiece.model, no tokenizer.json; -> the model, in eval mode."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    (directory / "spiece.model").write_bytes(spiece)
    return model


@pytest.fixture(scope="module")
def published_t5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, SentencePieceProcessor]:
    """A published-layout T5 whose vocabulary is the sentencepiece pieces plus T5's 100 sentinel ids; -> its
    directory, the model and the sentencepiece processor."""
    spiece = train_spiece()
    processor = SentencePieceProcessor(model_proto=spiece)
    directory = tmp_path_factory.mktemp("t5-published")
    return directory, write_published_t5(directory, spiece, processor.get_piece_size() + 100), processor


def test_a_published_t5_with_only_spiece_converts_to_the_same_embeddings(published_t5, tmp_path):
    source, model, processor = published_t5
    assert not (source / "tokenizer.json").exists()
    result = invoke("convert", "text-encoder", source, tmp_path / "text_encoder", "--max-length", "40")
    assert result.exit_code == 0, result.output
    assert "d_model 16" in result.output
    # The converted directory carries a tokenizer.json: loading it needs neither sentencepiece nor protobuf.
    assert (tmp_path / "text_encoder" / "t5" / "tokenizer.json").is_file()
    encoder = load_text_encoder(tmp_path / "text_encoder")
    assert isinstance(encoder, T5TextEncoder) and encoder.max_length == 40 and encoder.dim == 16
    text, mask = encoder.encode(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        ids = [*processor.encode(prompt), processor.eos_id()] if prompt else []
        assert mask[row].sum() == len(ids) < 40
        if ids:  # sentencepiece's own ids through the source's encoder (its decoder is not needed)
            with torch.no_grad():
                expected = model.encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
            torch.testing.assert_close(text[row, : len(ids)], expected, atol=1e-6, rtol=0)


def test_text_encoder_mistakes_end_in_one_line(published_t5, tmp_path, monkeypatch, open_muse_dir):
    source, model, processor = published_t5
    out = tmp_path / "text_encoder"
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    config = json.loads((source / "config.json").read_text())

    (broken / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "describes a 'bert' model, not a transformers T5" in one_line_error(
        invoke("convert", "text-encoder", broken, out))
    assert "describes a 'VQGANModel' model" in one_line_error(
        invoke("convert", "text-encoder", open_muse_dir[0], out))
    (broken / "config.json").write_text(json.dumps(config))

    state = dict(model.state_dict())
    del state["encoder.block.0.layer.0.SelfAttention.q.weight"]
    torch.save(state, broken / "pytorch_model.bin")
    assert "its weights lack 1 encoder tensors (the first: encoder.block.0.layer.0.SelfAttention.q.weight)" in \
        one_line_error(invoke("convert", "text-encoder", broken, out))
    state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(3, 3)
    torch.save(state, broken / "pytorch_model.bin")
    assert "its weights do not have the shapes its config.json gives" in one_line_error(
        invoke("convert", "text-encoder", broken, out))

    monkeypatch.setattr(text_encoders, "_importable", lambda module: module != "google.protobuf")
    assert "has spiece.model but no tokenizer.json: reading it needs protobuf (pip install 'wd-cli[t5]')" in \
        one_line_error(invoke("convert", "text-encoder", source, out))
    monkeypatch.undo()
    (broken / "spiece.model").unlink()
    assert "has no tokenizer: expected tokenizer.json or spiece.model" in one_line_error(
        invoke("convert", "text-encoder", broken, out))

    small = tmp_path / "no-sentinel-room"
    small.mkdir()
    write_published_t5(small, (source / "spiece.model").read_bytes(), processor.get_piece_size())
    assert f"its tokenizer has {processor.get_piece_size() + 100} tokens, more than the model's vocab_size" in \
        one_line_error(invoke("convert", "text-encoder", small, out))
    assert not out.exists()


# -- pipelines --------------------------------------------------------------------------------------------------

TINY_SETTINGS = ("steps=3", "num_frames=4", "height=32", "width=32", "fps=4.0", "context_frames=2")


def save_parts(pipeline: WorldDreamerPipeline, directory: Path) -> dict[str, Path]:
    """Each part of `pipeline` saved on its own, as a user would have them."""
    parts = {"tokenizer": directory / "tok", "stpt": directory / "stpt", "text-encoder": directory / "text"}
    pipeline.tokenizer.save_pretrained(parts["tokenizer"])
    pipeline.stpt.save_pretrained(parts["stpt"])
    pipeline.text_encoder.save_pretrained(parts["text-encoder"])
    return parts


def part_flags(parts: dict[str, Path]) -> list[str | Path]:
    return [item for name, path in parts.items() for item in (f"--{name}", path)]


def set_flags(settings: tuple[str, ...]) -> list[str]:
    return [item for setting in settings for item in ("--set", setting)]


def test_assembled_pipeline_is_what_save_pretrained_writes(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    parts = save_parts(tiny_pipeline, tmp_path)
    result = invoke("convert", "pipeline", *part_flags(parts), *set_flags(TINY_SETTINGS), tmp_path / "pipeline")
    assert result.exit_code == 0, result.output
    written = sorted(path.relative_to(tmp_path / "pipeline") for path in (tmp_path / "pipeline").rglob("*"))
    assert written == sorted(path.relative_to(tiny_pipeline_dir) for path in tiny_pipeline_dir.rglob("*"))
    for name in written:
        if (tiny_pipeline_dir / name).is_file():
            assert (tmp_path / "pipeline" / name).read_bytes() == (tiny_pipeline_dir / name).read_bytes(), name
    # Its format version and the checksum of every part's file, which loading checks first.
    config = json.loads((tmp_path / "pipeline" / "pipeline.json").read_text())
    files = {name.as_posix() for name in written if (tmp_path / "pipeline" / name).is_file()} - {"pipeline.json"}
    assert config["format_version"] == 1 and set(config["files"]) == files and len(config["checksum"]) == 64


def test_a_pipeline_source_keeps_its_parts_and_takes_new_defaults(tiny_pipeline_dir, tmp_path):
    result = invoke("convert", "pipeline", "--stpt", tiny_pipeline_dir, "--set", "steps=7", "--set", "top_k=5",
                    "--set", "num_frames=3", tmp_path / "pipeline")
    assert result.exit_code == 0, result.output
    before = json.loads((tiny_pipeline_dir / "pipeline.json").read_text())
    after = json.loads((tmp_path / "pipeline" / "pipeline.json").read_text())
    # num_frames alone brings context_frames (2) below it; nothing else changes.
    assert after["defaults"] == {**before["defaults"], "steps": 7, "top_k": 5, "num_frames": 3}
    for part in ("tokenizer/model.safetensors", "stpt/model.safetensors", "text_encoder/config.json"):
        assert (tmp_path / "pipeline" / part).read_bytes() == (tiny_pipeline_dir / part).read_bytes()


def test_a_run_supplies_its_ema_weights_parts_and_clip_shape(tiny_pipeline, tmp_path):
    parts = save_parts(tiny_pipeline, tmp_path)
    run = tmp_path / "run"
    config = STPTRunConfig(
        data=DataSection([SourceConfig("shapes", options={"height": 32, "width": 32, "num_frames": 3})]),
        model=ModelSection(tokenizer=str(parts["tokenizer"]), text_encoder=str(parts["text-encoder"])))
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(config))
    assert "is a training run without a checkpoint yet" in one_line_error(
        invoke("convert", "pipeline", "--stpt", run, tmp_path / "pipeline"))
    torch.manual_seed(1)
    ema = STPT(tiny_pipeline.stpt.config)  # weights of its own
    for step, kind in ((1, "model"), (2, "model"), (2, "ema")):  # the newest checkpoint's EMA weights win
        weights = tiny_pipeline.stpt if kind == "model" else ema
        weights.save_pretrained(run / "checkpoints" / f"step_{step:07d}" / kind)

    result = invoke("convert", "pipeline", "--stpt", run, "--set", "guidance_scale=1.5", tmp_path / "pipeline")
    assert result.exit_code == 0, result.output
    pipeline = WorldDreamerPipeline.from_pretrained(tmp_path / "pipeline")
    assert all(torch.equal(pipeline.stpt.state_dict()[key], value) for key, value in ema.state_dict().items())
    defaults = pipeline.defaults
    assert (defaults.num_frames, defaults.height, defaults.width, defaults.context_frames) == (3, 32, 32, 2)
    assert defaults.guidance_scale == 1.5
    # A checkpoint directory alone: its EMA weights too, the parts given.
    checkpoint = run / "checkpoints" / "step_0000002"
    assert invoke("convert", "pipeline", "--stpt", checkpoint, *part_flags({**parts, "stpt": checkpoint}),
                  *set_flags(TINY_SETTINGS), tmp_path / "from-checkpoint").exit_code == 0


def test_pipeline_mistakes_end_in_one_line(tiny_pipeline, tmp_path):
    parts = save_parts(tiny_pipeline, tmp_path)
    out = tmp_path / "pipeline"
    assert "stpt names no tokenizer (a training run's config or a pipeline does): pass the tokenizer and the " \
        "text encoder directory" in one_line_error(invoke("convert", "pipeline", "--stpt", parts["stpt"], out))
    flags = part_flags(parts)
    assert "defaults.steps: expected int, got 'many'" in one_line_error(
        invoke("convert", "pipeline", *flags, "--set", "steps=many", out))
    assert "defaults.colour: unknown key" in one_line_error(
        invoke("convert", "pipeline", *flags, "--set", "colour=red", out))
    # PipelineDefaults' 256x256 frames make a 32x32 token grid; fine. A frame size the tokenizer cannot divide:
    assert "the parts do not fit: frame size 36x32 is not divisible by the tokenizer's factor 8" in one_line_error(
        invoke("convert", "pipeline", *flags, "--set", "height=36", "--set", "width=32", out))
    HashTextEncoder(dim=8).save_pretrained(tmp_path / "narrow")
    assert "the parts do not fit: STPT text_dim 16 != text encoder dim 8" in one_line_error(
        invoke("convert", "pipeline", *part_flags({**parts, "text-encoder": tmp_path / "narrow"}), out))
    STPT(stpt_config("tiny", codebook_size=16, text_dim=16, width=32, num_heads=4)).save_pretrained(tmp_path / "s16")
    assert "STPT codebook_size 16 != tokenizer codebook_size 1000" in one_line_error(
        invoke("convert", "pipeline", *part_flags({**parts, "stpt": tmp_path / "s16"}), out))
    assert f"STPT {parts['tokenizer']}: " in one_line_error(
        invoke("convert", "pipeline", *part_flags({**parts, "stpt": parts["tokenizer"]}), out))
    assert f"text encoder {parts['stpt']}: " in one_line_error(
        invoke("convert", "pipeline", *part_flags({**parts, "text-encoder": parts["stpt"]}), out))
    assert not out.exists()


def test_converted_parts_make_a_pipeline_that_generates(open_muse_dir, published_t5, tmp_path):
    """The path of a user with public checkpoints: convert a VQGAN and a T5, add an STPT of their width, generate."""
    tokenizer_source, _ = open_muse_dir
    assert invoke("convert", "tokenizer", tokenizer_source, tmp_path / "tok").exit_code == 0
    assert invoke("convert", "text-encoder", published_t5[0], tmp_path / "t5").exit_code == 0
    STPT(stpt_config("tiny", codebook_size=32, text_dim=16, width=32, num_heads=4)).save_pretrained(tmp_path / "stpt")
    result = invoke("convert", "pipeline", "--stpt", tmp_path / "stpt", "--tokenizer", tmp_path / "tok",
                    "--text-encoder", tmp_path / "t5", *set_flags(("num_frames=2", "height=16", "width=16", "steps=2")),
                    tmp_path / "pipeline")
    assert result.exit_code == 0, result.output
    pipeline = WorldDreamerPipeline.from_pretrained(tmp_path / "pipeline", device="cpu")
    clip = pipeline.text_to_video("a red circle moves up", seed=0)
    assert clip.frames.shape == (2, 16, 16, 3) and clip.frames.dtype == np.uint8
    assert clip.tokens.max() < 32
