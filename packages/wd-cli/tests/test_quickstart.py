"""`wd quickstart` on a reduced budget writes every output, and a second run reuses the trained models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from wd_data import TokenCacheDataset

from wd_cli import quickstart
from wd_cli.main import cli
from wd_cli.media import read_frames
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.quickstart import Deadline, QuickstartConfig

TASKS = ("text2video", "image2video", "predict", "interpolate", "inpaint", "outpaint", "stylize", "action2video",
         "text+actions")


def test_quickstart_writes_every_output_and_reuses_its_models(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    args = ["quickstart", "--out", str(out), "--minutes", "0.3", "--clips", "8", "--eval-clips", "1"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "[3/5] STPT" in first.output and "text2video dominant colour" in first.output

    pipeline = WorldDreamerPipeline.from_pretrained(out / "pipeline")
    assert (pipeline.defaults.height, pipeline.defaults.num_frames) == (32, 8)
    assert pipeline.stpt.config.action_dim == 2 and pipeline.tokenizer.downsample_factor == 4
    assert pipeline.stpt.config.action_scale == (0.12, 10.0)  # the drive world's largest yaw change, 10 m/s
    # Shapes clips keep their captions; drive clips train on their actions alone.
    assert len(TokenCacheDataset(out / "caches" / "shapes")[0]["text"]) > 0
    drive = TokenCacheDataset(out / "caches" / "drive")[0]
    assert len(drive["text"]) == 0 and drive["actions"].shape == (8, 2)
    run = yaml.safe_load((out / "runs" / "stpt" / "config.yaml").read_text())
    assert {Path(source["path"]).name: source["weight"] for source in run["data"]["sources"]} == {"shapes": 1.5,
                                                                                                  "drive": 1.0}
    for task in TASKS:
        for column in ("input", "mask", "output"):
            assert (out / "tasks" / task / f"{column}.gif").is_file()
        assert read_frames(out / "tasks" / task / "output.mp4").shape[1:] == (32, 32, 3)
    # The action-to-video demo is a rollout: two windows of 8 frames continued from 2; interpolation fills
    # 9 frames between keyframes every 4th.
    assert len(read_frames(out / "tasks" / "action2video" / "output.mp4")) == 14
    assert len(read_frames(out / "tasks" / "interpolate" / "output.mp4")) == 9
    assert (out / "contact_sheet.png").stat().st_size > 0
    page = (out / "index.html").read_text()
    assert all(f"tasks/{task}/output.gif" in page for task in TASKS)
    metrics = json.loads((out / "metrics.json").read_text())
    # The paper's five tasks (with image2video's shape IoU, inpainting's three rows and stylization's), prediction, interpolation, outpainting, text and actions, and four windows of a
    # 24-frame rollout.
    assert len(metrics) == 9 + 5 + 2 + 2 + 2 + 3 + 4 and all("beats_baseline" in row for row in metrics)
    assert metrics[-1]["name"].startswith("long rollout (24 frames, windows of 8)")

    stpt_weights = out / "pipeline" / "stpt" / "model.safetensors"
    before = stpt_weights.stat().st_mtime_ns
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "Reusing the trained pipeline" in second.output and "[1/5]" not in second.output
    assert stpt_weights.stat().st_mtime_ns == before


def test_quickstart_config_errors() -> None:
    with pytest.raises(ValueError, match="size must be a multiple of 8"):
        QuickstartConfig(size=20)
    with pytest.raises(ValueError, match="minutes must be > 0"):
        QuickstartConfig(minutes=0)


def test_quickstart_help_shows_an_example() -> None:
    result = CliRunner().invoke(cli, ["quickstart", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--minutes" in result.output


def test_deadline_gives_training_what_the_later_stages_leave(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(quickstart.time, "monotonic", lambda: clock[0])
    deadline = Deadline(minutes=10)
    assert deadline.training_seconds(reserved=150) == 450
    clock[0] += 300  # a stage took five minutes: the next one gets what is left
    assert deadline.training_seconds(reserved=150) == 150
    clock[0] += 1000  # past the end: a late stage still runs a step rather than none
    assert deadline.training_seconds(reserved=150) == 1.0
