"""README "Train on your own videos", end to end from the command line at toy sizes: a folder of mp4 files ->
wd data curate -> wd train tokenizer -> wd data cache -> wd train stpt -> wd train export -> wd generate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from wd_data import TokenCacheDataset, read_video, write_video

from wd_cli.main import cli

CONFIGS = Path(__file__).parents[1] / "configs"
TINY_STPT = {"preset": "tiny", "overrides.width": 32, "overrides.depth": 2, "overrides.num_heads": 2,
             "overrides.position_frames": 4, "overrides.position_height": 4, "overrides.position_width": 4}


def wd(*args) -> str:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def settings(**values) -> list[str]:
    return [flag for key, value in values.items() for flag in ("--set", f"{key.replace('__', '.')}={value}")]


def test_a_folder_of_videos_becomes_a_model_that_generates(texture_clip, tmp_path, monkeypatch):
    pytest.importorskip("scenedetect")
    pytest.importorskip("cv2")
    monkeypatch.chdir(tmp_path)  # the README's relative paths
    Path("my_videos").mkdir()
    for index in range(2):  # 6 s each, a hard cut after 3 s
        frames = np.concatenate([texture_clip(2 * index, 24), texture_clip(2 * index + 1, 24) // 3])
        write_video(f"my_videos/walk{index}.mp4", frames, fps=8)

    assert "kept 4 of 4 scenes from 2 videos" in wd("data", "curate", "my_videos", "--out", "data/curated")
    wd("train", "tokenizer", "-c", CONFIGS / "tokenizer-own-videos.toml", "--no-progress", "runs/own-tokenizer",
       *settings(data__options="{ num_frames = 4, size = 32, fps = 4.0 }", batch_size=4, num_clips=4,
                 train__steps=2, train__checkpoint_every=2, train__log_every=1))
    Path("runs/text").mkdir()
    Path("runs/text/config.json").write_text(json.dumps({"class": "HashTextEncoder", "dim": 16}))
    wd("data", "cache", "data/curated", "--tokenizer", "runs/own-tokenizer", "--text-encoder", "runs/text",
       "--frames", "4", "--size", "32", "--fps", "4", "--out", "caches/own", "--no-progress")
    assert len(TokenCacheDataset("caches/own")) == 4
    wd("train", "stpt", "-c", CONFIGS / "own-videos.toml", "--no-progress", "runs/own-stpt",
       *settings(**{f"model.{key}": value for key, value in TINY_STPT.items()}, data__batch_size=2,
                 train__steps=3, optim__warmup_steps=1, checkpoint__every=3, logging__every=1,
                 logging__sample_every=3))
    assert list(Path("runs/own-stpt/samples").glob("step_0000003_*.mp4"))
    wd("train", "export", "runs/own-stpt", "pipelines/own")
    wd("generate", "--task", "text2video", "--prompt", "a walk in the park", "--checkpoint", "pipelines/own",
       "--steps", "2", "--out", "walk.mp4")
    assert read_video("walk.mp4", 4).shape == (4, 32, 32, 3)
