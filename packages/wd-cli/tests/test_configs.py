"""The paper's stages as shipped in configs/ run as written once the data exists: here on tiny data in the same
on-disk formats (PyAV mp4s, WebVid CSV, img2dataset tars, a mini nuScenes dataroot), prepared with the commands
in each config's header, and with the model shrunk through --set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from wd_data import TokenCacheDataset
from wd_data.testing import write_nuscenes_dataroot

from wd_cli.main import cli
from wd_cli.pipeline import WorldDreamerPipeline

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = {"width": 32, "depth": 2, "num_heads": 2, "position_frames": 2, "position_height": 4, "position_width": 4}
# Tiny instead of paper sizes: one step's worth of training, no compile on the CPU.
SHRINK = ["model.preset=tiny", *(f"model.overrides.{key}={value}" for key, value in TINY.items()),
          "train.steps=2", "data.batch_size=2", "optim.warmup_steps=1", "checkpoint.every=2", "logging.every=1",
          "parallel.compile=false", "train.device=cpu"]


def wd(*args) -> str:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def train(config: str, run_dir: Path, *settings: str) -> list[dict]:
    """`wd train stpt -c configs/CONFIG` with SHRINK and `settings`; -> its metrics.jsonl lines."""
    overrides = [flag for setting in [*SHRINK, *settings] for flag in ("--set", setting)]
    wd("train", "stpt", "-c", CONFIGS / config, *overrides, "--no-progress", run_dir)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(media_sources, tiny_vqgan_dir, hash_text_dir, tmp_path_factory) -> Path:
    """pretrain-webvid-laion.toml on a WebVid CSV and img2dataset shards, cached as its header says; -> the
    exported pipeline (what the fine-tuning configs start from)."""
    root = tmp_path_factory.mktemp("pretrain")
    parts = ["--tokenizer", tiny_vqgan_dir, "--text-encoder", hash_text_dir, "--frames", "2", "--size", "32"]
    wd("data", "cache", media_sources["csv"], "--fps", "8", *parts, "--out", root / "webvid", "--no-progress")
    wd("data", "cache", media_sources["shards"], *parts, "--out", root / "laion", "--no-progress")
    lines = train("pretrain-webvid-laion.toml", root / "run", f"data.sources.0.path='{root / 'webvid'}'",
                  f"data.sources.1.path='{root / 'laion'}'", f"model.tokenizer='{tiny_vqgan_dir}'")
    assert [line["step"] for line in lines] == [1, 2]
    wd("train", "export", root / "run", root / "pipeline", "--text-encoder", hash_text_dir)
    return root / "pipeline"


def test_pretraining_runs_on_webvid_and_laion_caches(pretrained):
    pipeline = WorldDreamerPipeline.from_pretrained(pretrained)
    assert pipeline.stpt.config.codebook_size == 16 and pipeline.stpt.config.text_dim == 8
    assert (pipeline.defaults.num_frames, pipeline.defaults.height, pipeline.defaults.width) == (2, 32, 32)


def test_fine_tuning_at_a_new_shape_from_the_pretrained_pipeline(media_sources, tiny_vqgan_dir, hash_text_dir,
                                                               pretrained, tmp_path):
    parts = ["--tokenizer", tiny_vqgan_dir, "--text-encoder", hash_text_dir, "--frames", "3", "--size", "32x48"]
    wd("data", "cache", media_sources["videos"], *parts, "--out", tmp_path / "own", "--no-progress")
    wd("data", "cache", media_sources["csv"], "--fps", "8", *parts, "--out", tmp_path / "webvid", "--no-progress")
    assert TokenCacheDataset(tmp_path / "own")[0]["tokens"].shape == (3, 4, 6)
    lines = train("finetune-192x320.toml", tmp_path / "run", f"data.sources.0.path='{tmp_path / 'own'}'",
                  f"data.sources.1.path='{tmp_path / 'webvid'}'", f"model.tokenizer='{tiny_vqgan_dir}'",
                  f"model.init_from='{pretrained}'")
    assert len(lines) == 2 and lines[-1]["samples_skipped"] == 0


def test_nuscenes_action_fine_tuning(tiny_vqgan_dir, hash_text_dir, pretrained, tmp_path):
    pytest.importorskip("nuscenes")
    # Scenes named after the devkit's mini_train split, in a v1.0-mini dataroot.
    dataroot = write_nuscenes_dataroot(tmp_path / "nuscenes", {"scene-0061": 25, "scene-0553": 13})
    lines = train("nuscenes-actions.toml", tmp_path / "run", f"data.sources.0.path='{dataroot}'",
                  "data.sources.0.options.version='v1.0-mini'", "data.sources.0.options.split='mini_train'",
                  "data.sources.0.options.num_frames=2", "data.sources.0.options.size=[32, 48]",
                  f"model.tokenizer='{tiny_vqgan_dir}'", f"model.text_encoder='{hash_text_dir}'",
                  f"model.init_from='{pretrained}'")
    assert len(lines) == 2
    config = json.loads((tmp_path / "run" / "checkpoints" / "step_0000002" / "model" / "config.json").read_text())
    assert config["action_scale"] == [0.1, 10.0]
