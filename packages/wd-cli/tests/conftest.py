"""Shared tiny parts, built once per session: a saved tiny T5, a tiny pipeline (plus its saved directory), a
tiny VQGAN and text encoder directory, tiny data in every on-disk format the data commands read, and a tiny token
cache with a training config for it.

Session-scoped objects are shared by every test: use them, never modify them (no `.to`, no new weights).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from wd_stpt import STPT
from wd_stpt import get_config as stpt_config
from wd_tokenizer import VQGAN
from wd_tokenizer import get_config as tokenizer_config

from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.text_encoders import HashTextEncoder

SENTENCES = ["a red circle moves up", "a blue square moves down and bounces", "a green triangle moves left"]


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer T5 encoder (d_model 16) and a word-level tokenizer trained on three sentences, saved the
    transformers way (what `T5TextEncoder.from_pretrained` reads from a hub name or local path)."""
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    words.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", words.token_to_id("</s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    directory = tmp_path_factory.mktemp("tiny-t5")
    T5EncoderModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


TINY_DEFAULTS = PipelineDefaults(steps=3, num_frames=4, height=32, width=32, fps=4.0, context_frames=2)


def build_tiny_pipeline(text_encoder=None) -> WorldDreamerPipeline:
    """Untrained f8-small tokenizer (32x32 frames -> 4x4 tokens, 1000 codes), a width-32 `tiny` STPT, a
    16-dim HashTextEncoder (or `text_encoder`), 4-frame windows continued from 2 frames, 3 sampler steps."""
    torch.manual_seed(0)
    tokenizer = VQGAN(tokenizer_config("f8-small"))
    stpt = STPT(stpt_config("tiny", codebook_size=tokenizer.codebook_size, text_dim=16, width=32, num_heads=4))
    return WorldDreamerPipeline(tokenizer, stpt, text_encoder or HashTextEncoder(dim=16), TINY_DEFAULTS)


@pytest.fixture(scope="session")
def make_tiny_pipeline():
    """`build_tiny_pipeline` itself, for tests that need a pipeline of their own (e.g. another text encoder)."""
    return build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline() -> WorldDreamerPipeline:
    """The tiny pipeline, on the CPU; see `build_tiny_pipeline`."""
    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipeline: WorldDreamerPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_pipeline` saved once with `save_pretrained` (treat it as read-only; copy it to change it)."""
    directory = tmp_path_factory.mktemp("tiny-pipeline") / "pipeline"
    tiny_pipeline.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_vqgan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained f8 VQGAN with 16 codes (FSQ 4x4), saved: 32x32 frames -> 4x4 tokens."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vqgan") / "tokenizer"
    VQGAN(tokenizer_config("f8-small", fsq_levels=[4, 4])).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hash_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 8-dim HashTextEncoder."""
    directory = tmp_path_factory.mktemp("text") / "text_encoder"
    HashTextEncoder(dim=8).save_pretrained(directory)
    return directory


def moving_frames(seed: int, count: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (count, H, W, 3): a smooth random texture panning 2 px a frame (H.264 keeps it, scene detection
    sees one shot, optical flow sees motion)."""
    rng = np.random.default_rng(seed)
    columns = (width + 2 * count) // 8 + 1
    texture = Image.fromarray(rng.integers(0, 256, (height // 8, columns, 3), dtype=np.uint8))
    wide = np.asarray(texture.resize((8 * columns, height), Image.Resampling.BICUBIC))
    return np.stack([wide[:, 2 * i : 2 * i + width] for i in range(count)])


@pytest.fixture(scope="session")
def texture_clip():
    """`moving_frames(seed, count)` itself, for tests that write their own videos."""
    return moving_frames


@pytest.fixture(scope="session")
def media_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny data in every on-disk format `wd data cache` and `wd train` read, written with PyAV and Pillow:
    "videos" (3 mp4 of 12 frames at 8 fps, 2 with sidecar captions), "csv" / "jsonl" manifests of them (WebVid
    columns / path + caption), "images" (8 PNGs + captions), "shards" (2 img2dataset tars of 4 images),
    "video_shards" (1 tar of 2 mp4 + txt) and "nuscenes" (a mini dataroot)."""
    from wd_data import write_video
    from wd_data.testing import image_record, write_nuscenes_dataroot, write_tar

    root = tmp_path_factory.mktemp("media")
    (root / "videos").mkdir()
    for index in range(3):
        write_video(root / "videos" / f"clip{index}.mp4", moving_frames(index), fps=8)
        if index < 2:
            (root / "videos" / f"clip{index}.txt").write_text(f"a panning texture number {index}\n")
    (root / "webvid.csv").write_text("videoid,page_dir,name\n" + "".join(
        f"clip{index},videos,a panning texture number {index}\n" for index in range(3)))
    (root / "webvid.jsonl").write_text("".join(
        json.dumps({"path": f"videos/clip{index}.mp4", "caption": f"texture {index}"}) + "\n" for index in range(3)))
    (root / "images").mkdir()
    for index in range(8):
        Image.fromarray(moving_frames(10 + index, count=1)[0]).save(root / "images" / f"{index}.png")
        (root / "images" / f"{index}.txt").write_text(f"image {index}")
    (root / "shards").mkdir()
    for shard in range(2):
        write_tar(root / "shards" / f"{shard:05d}.tar",
                  [member for item in range(4) for member in image_record(f"{shard}{item:03d}", 30 * item + shard)])
    (root / "video_shards").mkdir()
    write_tar(root / "video_shards" / "00000.tar",
              [member for index in range(2) for member in [
                  (f"v{index}.mp4", (root / "videos" / f"clip{index}.mp4").read_bytes()),
                  (f"v{index}.txt", f"video {index}".encode())]])
    write_nuscenes_dataroot(root / "nuscenes")
    return {name: root / name for name in ("videos", "images", "shards", "video_shards", "nuscenes")} | {
        "csv": root / "webvid.csv", "jsonl": root / "webvid.jsonl"}


@pytest.fixture
def sigterm_after_step(monkeypatch: pytest.MonkeyPatch):
    """`sigterm_after_step(n)`: the next training run gets SIGTERM while it logs step n (so it finishes step n + 1,
    saves and exits, as a preempted job does); `monkeypatch.undo()` lets later runs go on."""
    from wd_cli.train.metrics import MetricsLog

    log = MetricsLog.log

    def arm(step: int) -> None:
        def terminate(self, logged: int, values: dict) -> None:
            log(self, logged, values)
            if logged == step:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(MetricsLog, "log", terminate)

    return arm


@pytest.fixture(scope="session")
def without_checksums():
    """A function dropping pipeline.json's file and self checksums from a pipeline directory, as in one saved
    before they existed: its parts can then be swapped by hand, and loading checks how they fit instead."""

    def strip(directory: Path) -> Path:
        config = json.loads((directory / "pipeline.json").read_text())
        config.pop("files"), config.pop("checksum")
        (directory / "pipeline.json").write_text(json.dumps(config))
        return directory

    return strip


@pytest.fixture(scope="session")
def shapes_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token cache of 8 shapes clips of 2 x 4 x 4 tokens (a pixel subsample stands in for the tokenizer),
    codebook 16, 8-dim caption embeddings."""
    from wd_data import ShapesConfig, ShapesDataset, write_token_cache

    encoder = HashTextEncoder(dim=8)
    dataset = ShapesDataset(ShapesConfig(height=16, width=16, num_frames=2, min_size=0.15), seeds=range(8))
    return write_token_cache(dataset, lambda frames: torch.as_tensor(frames)[:, ::4, ::4, 0].long() // 16,
                             tmp_path_factory.mktemp("shapes-cache"), samples_per_shard=4, progress=False,
                             metadata={"codebook_size": 16},
                             encode_text=lambda caption: encoder.encode([caption])[0][0])


@pytest.fixture(scope="session")
def tiny_run_config(shapes_cache: Path):
    """A function: steps (and keyword overrides of the sections) -> an STPTRunConfig training a width-32 STPT on
    `shapes_cache` at a constant lr (so runs of different lengths agree step by step), a checkpoint every step
    (3 kept), metrics every step."""
    from wd_cli.train import (CheckpointSection, DataSection, LoggingSection, ModelSection, OptimSection,
                              SourceConfig, STPTRunConfig, TrainSection)

    def make(steps: int, **sections) -> STPTRunConfig:
        defaults = dict(data=DataSection([SourceConfig("token_cache", str(shapes_cache))], batch_size=2),
                        model=ModelSection(overrides={"width": 32, "depth": 2, "num_heads": 2, "position_frames": 2,
                                                      "position_height": 4, "position_width": 4}),
                        optim=OptimSection(lr=3e-3, warmup_steps=1, schedule="constant"),
                        train=TrainSection(steps=steps),
                        checkpoint=CheckpointSection(every=1, keep=3), logging=LoggingSection(every=1))
        return STPTRunConfig(**{**defaults, **sections})

    return make


@pytest.fixture(scope="session")
def run_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tokenizer, text encoder) directories that fit `shapes_cache` (16 codes over 4x4 tokens of 16x16 frames,
    8-dim text), for exporting a run trained on it."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("run-parts")
    VQGAN(tokenizer_config("f4-small", fsq_levels=[4, 4])).save_pretrained(root / "tokenizer")
    HashTextEncoder(dim=8).save_pretrained(root / "text_encoder")
    return root / "tokenizer", root / "text_encoder"
