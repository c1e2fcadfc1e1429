"""`wd generate`: every task writes a readable video of the right length and size, the CLI matches the Python
API, and user mistakes end in one line and a non-zero exit (no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from wd_data import iter_frames, probe_video, write_video
from wd_stpt import STPT
from wd_stpt import get_config as stpt_config

from wd_cli.main import cli
from wd_cli.media import read_frames
from wd_cli.pipeline import WorldDreamerPipeline

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An image (not the model's size), a 5-frame video, a narrower one, a mask image and actions as CSV and JSON."""
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "image.png")
    write_video(folder / "video.mp4", RNG.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), fps=4)
    write_video(folder / "narrow.mp4", RNG.integers(0, 256, (3, 32, 16, 3), dtype=np.uint8), fps=4)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[20:, 20:] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    (folder / "actions.csv").write_text("yaw,speed\n" + "\n".join(f"{0.02 * i},5.0" for i in range(6)) + "\n")
    (folder / "actions.json").write_text(json.dumps({"actions": [[0.05, 4.0]] * 3}))
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "bad_actions.csv").write_text("0.1,5\n0.2\n")
    return folder


def _run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["generate", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _frame_count_and_size(path: Path) -> tuple[int, int, int]:
    info = probe_video(path)
    return sum(1 for _ in iter_frames(path)), info.height, info.width


# case -> (task, its arguments, frames written). The video has 5 frames and the model's window 4, so every task
# given more than 4 frames runs in overlapping windows.
TASK_ARGS = {
    "text2video": ("text2video", ["--prompt", "a red circle moves up", "--frames", "6"], 6),
    "text2video+actions": ("text2video", ["--prompt", "the car turns left", "--actions", "actions.csv"], 6),
    "image2video": ("image2video", ["--image", "image.png", "--prompt", "a red circle"], 4),
    "predict": ("predict", ["--video", "video.mp4", "--frames", "9", "--prompt", "a red circle"], 9),
    "action2video": ("action2video", ["--image", "image.png", "--actions", "actions.csv"], 6),
    "interpolate every": ("interpolate", ["--video", "video.mp4", "--every", "2"], 9),
    "interpolate first and last": ("interpolate", ["--video", "keys.mp4", "--frames", "7"], 7),
    "inpaint": ("inpaint", ["--video", "video.mp4", "--mask", "mask.png", "--prompt", "a blue square"], 5),
    "outpaint widen": ("outpaint", ["--video", "narrow.mp4"], 3),
    "outpaint border": ("outpaint", ["--video", "video.mp4", "--border", "8,0,8,0", "--frames", "4"], 4),
    "stylize": ("stylize", ["--video", "video.mp4", "--prompt", "green", "--mask-ratio", "0.3", "--frames", "3"], 3),
}


@pytest.mark.parametrize("case", TASK_ARGS)
def test_every_task_writes_a_readable_video(
    case: str, inputs: dict[str, Path], tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    task, extra, frames = TASK_ARGS[case]
    if not (inputs / "keys.mp4").is_file():  # the first and the last frame
        write_video(inputs / "keys.mp4", read_frames(inputs / "video.mp4")[[0, -1]], fps=4)
    extra = [str(inputs / value) if (inputs / value).is_file() else value for value in extra]
    suffix = ".gif" if task == "stylize" else ".mp4"
    out, tokens = tmp_path / f"out{suffix}", tmp_path / "tokens.npy"
    code, output = _run("--task", task, *extra, "--checkpoint", tiny_pipeline_dir, "--out", out,
                        "--tokens-out", tokens, "--steps", "2", "--device", "cpu")
    assert code == 0, output
    assert f"({frames} frames, 32x32)" in output
    assert _frame_count_and_size(out) == (frames, 32, 32)
    assert np.load(tokens).shape == (frames, 4, 4)


def test_cli_tokens_equal_the_python_api(inputs: dict[str, Path], tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    code, output = _run("--task", "action2video", "--image", inputs / "image.png", "--actions",
                        inputs / "actions.json", "--prompt", "left", "--seed", "4", "--guidance", "1.5",
                        "--checkpoint", tiny_pipeline_dir, "--out", tmp_path / "a.mp4", "--tokens-out",
                        tmp_path / "a.npy")
    assert code == 0, output
    pipeline = WorldDreamerPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    image = np.asarray(Image.open(inputs / "image.png").convert("RGB"))
    expected = pipeline.action_to_video(image, [[0.05, 4.0]] * 3, "left", seed=4, guidance_scale=1.5)
    assert np.array_equal(np.load(tmp_path / "a.npy"), expected.tokens)


def test_cli_plausibility_equals_the_python_api(inputs: dict[str, Path], tiny_pipeline_dir: Path,
                                               tmp_path: Path) -> None:
    code, output = _run("--task", "text2video", "--prompt", "a red circle", "--seed", "2", "--plausibility", "0.9",
                        "--checkpoint", tiny_pipeline_dir, "--out", tmp_path / "p.mp4", "--tokens-out",
                        tmp_path / "p.npy", "--device", "cpu")
    assert code == 0, output
    pipeline = WorldDreamerPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    expected = pipeline.text_to_video("a red circle", seed=2, plausibility=0.9)
    assert np.array_equal(np.load(tmp_path / "p.npy"), expected.tokens)
    assert not np.array_equal(expected.tokens, pipeline.text_to_video("a red circle", seed=2).tokens)


def _mismatched_checkpoint(tiny_pipeline_dir: Path, tmp_path: Path, without_checksums) -> Path:
    """A copy whose STPT has another codebook than the tokenizer."""
    broken = tmp_path / "mismatched"
    shutil.copytree(tiny_pipeline_dir, broken)
    STPT(stpt_config("tiny", codebook_size=64, text_dim=16, width=32, num_heads=4)).save_pretrained(broken / "stpt")
    return without_checksums(broken)


def test_mistakes_end_in_one_line(inputs: dict[str, Path], tiny_pipeline_dir: Path, tmp_path: Path,
                                  without_checksums) -> None:
    out = tmp_path / "out.mp4"
    common = ["--checkpoint", tiny_pipeline_dir, "--out", out]
    cases = [
        (["--task", "image2video", *common], "--task image2video needs --image"),
        (["--task", "stylize", "--video", inputs / "video.mp4", *common], "--task stylize needs --prompt"),
        (["--task", "inpaint", "--video", inputs / "video.mp4", "--mask", inputs / "mask.png", "--box", "0,0,8,8",
          *common], "exactly one of --mask and --box"),
        (["--task", "text2video", "--prompt", "x", "--box", "0,0,8,8", *common], "--box does not apply"),
        (["--task", "inpaint", "--video", inputs / "video.mp4", "--box", "0,0,8", *common], "four integers"),
        (["--task", "inpaint", "--video", inputs / "video.mp4", "--box", "0,0,99,8", *common], "box (0, 0, 99, 8)"),
        (["--task", "image2video", "--image", inputs / "broken.png", *common], "cannot decode image"),
        (["--task", "image2video", "--image", tmp_path / "missing.png", *common], "does not exist"),
        (["--task", "action2video", "--image", inputs / "image.png", "--actions", inputs / "bad_actions.csv",
          *common], "bad_actions.csv: actions must be rows of numbers"),
        (["--task", "action2video", "--image", inputs / "image.png", "--actions", inputs / "actions.csv",
          "--frames", "3", *common], "6 action rows"),
        (["--task", "interpolate", "--video", inputs / "video.mp4", *common],
         "--task interpolate needs exactly one of --every and --frames"),
        (["--task", "interpolate", "--video", inputs / "video.mp4", "--frames", "8", *common],
         "--frames 8 cannot hold the video's 5 frames as evenly spaced keyframes"),
        (["--task", "outpaint", "--video", inputs / "video.mp4", "--border", "16,0,16,0", *common],
         "border (16, 0, 16, 0) (top, left, bottom, right) must be >= 0 and leave some of the 32x32 frame"),
        (["--task", "outpaint", "--video", inputs / "video.mp4", *common], "nothing to outpaint"),
        (["--task", "predict", "--video", inputs / "video.mp4", "--frames", "3", *common],
         "5 given frames are more than the num_frames=3"),
        (["--task", "text2video", "--prompt", "x", "--checkpoint", tmp_path / "nowhere", "--out", out],
         "does not exist"),
        (["--task", "text2video", "--prompt", "x", "--checkpoint",
          _mismatched_checkpoint(tiny_pipeline_dir, tmp_path, without_checksums), "--out", out],
         "codebook_size 64 != tokenizer codebook_size 1000"),
        (["--task", "text2video", "--prompt", "x", "--checkpoint", tiny_pipeline_dir, "--out", tmp_path / "o.avi"],
         "use one of ('.mp4', '.gif')"),
        (["--task", "text2video", "--prompt", "x", "--device", "tpu", *common], "unknown device"),
    ]
    for args, message in cases:
        code, output = _run(*args)
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert code != 0 and "Traceback" not in output, (args, output)
        assert len(errors) == 1 and message in errors[0], (message, output)
    assert not out.exists()


def test_help_shows_examples() -> None:
    result = CliRunner().invoke(cli, ["generate", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--task" in result.output


@pytest.mark.distributed
def test_python_m_wd_cli_generate_writes_an_mp4(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rollout.mp4"
    completed = subprocess.run(
        [sys.executable, "-m", "wd_cli", "generate", "--task", "text2video", "--prompt", "a red circle",
         "--frames", "7", "--steps", "2", "--checkpoint", str(tiny_pipeline_dir), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert _frame_count_and_size(out) == (7, 32, 32)
    assert probe_video(out).fps == pytest.approx(4.0)
