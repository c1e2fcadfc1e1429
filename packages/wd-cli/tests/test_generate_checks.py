"""Everything `wd generate` and the pipeline are given is checked before the model runs: non-finite or overflowing
numbers, frame rates the writer cannot store, unwritable outputs, requests or defaults too large for the memory,
weights holding NaN, configs newer than this code. Each is one line naming the option, file or tensor."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wd_cli.generate import GenerateArgs
from wd_cli.limits import MemoryLimitError, generation_memory
from wd_cli.windowing import SPAN_WINDOWS, LongVideo
from wd_cli.main import cli
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.validation import request_size


@pytest.fixture
def model_never_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(WorldDreamerPipeline, "_model_fn", refuse)


def run(*args: str | Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["generate", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output.strip().splitlines()


def text2video(checkpoint: Path, out: Path, *extra: str | Path) -> tuple[int, list[str]]:
    return run("--task", "text2video", "--prompt", "a red circle", "--checkpoint", checkpoint, "--out", out,
               "--no-progress", "--device", "cpu", *extra)


@pytest.mark.parametrize(("extra", "message"), [
    (["--guidance", "nan"], "Invalid value for '--guidance': 'nan' is not a finite number"),
    (["--guidance", "inf"], "Invalid value for '--guidance': 'inf' is not a finite number"),
    (["--guidance", "1e30"], "--guidance: guidance_scale must be a finite number in [0, 10000], got 1e+30"),
    (["--temperature", "nan"], "Invalid value for '--temperature': 'nan' is not a finite number"),
    (["--temperature", "1e-30"], "--temperature: temperature must be 0 (argmax) or >= 0.0001"),
    (["--plausibility", "0"], "Invalid value for '--plausibility': 0.0 is not in the range 0<x<=1"),
    (["--steps", "100000"], "--steps: steps must be in [1, 10000], got 100000"),
    (["--fps", "1e-6"], "fps must be finite and in [0.01, 50] for a .gif file, got 1e-06"),
    (["--fps", "nan"], "Invalid value for '--fps': 'nan' is not a finite number"),
    (["--seed", str(2**64)], "Invalid value for '--seed'"),
    (["--memory-limit", "0.00001"], "over the limit of 0.0 MiB"),
])
def test_bad_numbers_are_one_line_before_the_model_runs(tiny_pipeline_dir, tmp_path, model_never_runs, extra, message):
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "out.gif", *extra)
    errors = [line for line in lines if line.startswith("Error")]
    assert code != 0 and len(errors) == 1 and message in errors[0], lines
    assert not (tmp_path / "out.gif").exists()


def test_a_nan_mask_ratio_is_refused(tiny_pipeline_dir, tmp_path, model_never_runs):
    code, lines = run("--task", "stylize", "--video", tiny_pipeline_dir / "pipeline.json", "--prompt", "x",
                      "--mask-ratio", "nan", "--checkpoint", tiny_pipeline_dir, "--out", tmp_path / "o.mp4")
    assert code != 0 and "Invalid value for '--mask-ratio': 'nan' is not a finite number" in lines[-1], lines


def test_unwritable_outputs_are_refused_before_loading_anything(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(WorldDreamerPipeline, "from_pretrained", None)  # loading would fail loudly
    (tmp_path / "a-file").write_text("")
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "a-file" / "out.mp4")
    assert code == 1 and lines == [f"Error: --out {tmp_path / 'a-file' / 'out.mp4'}: {tmp_path / 'a-file'} is a "
                                   "file, not a folder"], lines
    (tmp_path / "folder.mp4").mkdir()
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "folder.mp4")
    assert code == 2 and lines[-1].endswith("folder.mp4' is a directory."), lines  # click checks this one
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "o.mp4", "--tokens-out", tmp_path / "a-file" / "t.npy")
    assert code == 1 and lines[0].startswith("Error: --tokens-out"), lines
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "folder.mp4"]


def test_outputs_in_new_folders_are_fine(tiny_pipeline_dir, tmp_path):
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "new" / "deeper" / "out.mp4")
    assert code == 0 and (tmp_path / "new" / "deeper" / "out.mp4").is_file(), lines


def test_a_request_too_large_for_the_memory_is_refused_with_the_estimate(tiny_pipeline_dir, tiny_pipeline, tmp_path,
                                                                          model_never_runs, monkeypatch):
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "o.gif", "--frames", str(10**9))
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("Error: this request needs about ") and " of memory (1000000000 frames of 32x32, " in \
        lines[0] and "over the limit of " in lines[0] and "--memory-limit, WD_MEMORY_LIMIT_GB" in lines[0], lines
    monkeypatch.setenv("WD_MEMORY_LIMIT_GB", "0.00001")
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "o.gif")
    assert code == 1 and "over the limit of 0.0 MiB" in lines[0], lines
    monkeypatch.setenv("WD_MEMORY_LIMIT_GB", "lots")
    code, lines = text2video(tiny_pipeline_dir, tmp_path / "o.gif")
    assert lines == ["Error: WD_MEMORY_LIMIT_GB must be a number of GiB, got 'lots'"], lines
    monkeypatch.delenv("WD_MEMORY_LIMIT_GB")
    with pytest.raises(MemoryLimitError, match="1000000000 frames"):  # the Python API checks too
        tiny_pipeline.text_to_video("a red circle", num_frames=10**9)


def test_the_estimate_grows_with_what_costs_memory(tiny_pipeline):
    base = generation_memory(tiny_pipeline, 4)
    assert generation_memory(tiny_pipeline, 400).host > 50 * base.host  # output frames and tokens
    assert generation_memory(tiny_pipeline, 4, guided=False).device < base.device  # one branch, not two
    assert generation_memory(tiny_pipeline, 4, input_frames=(100, 1080, 1920)).host > 1080 * 1920 * 3 * 100
    # Co-decoding keeps log-probabilities for a whole span: device memory grows up to one span, then stays flat.
    window = tiny_pipeline.defaults.num_frames
    one, span = generation_memory(tiny_pipeline, window), generation_memory(tiny_pipeline, SPAN_WINDOWS * window)
    assert span.device > 2 * one.device
    assert generation_memory(tiny_pipeline, 10 * SPAN_WINDOWS * window).device == span.device


def test_rollouts_are_estimated_at_the_span_they_decode(tiny_pipeline, monkeypatch):
    """A rollout decodes window by window (its gap past the given frames is longer than half a window), so it is
    counted at one window's logits where a video task of the same length is counted at a co-decoded span."""
    window = tiny_pipeline.defaults.num_frames
    frames = SPAN_WINDOWS * window
    video_task = generation_memory(tiny_pipeline, frames)
    assert generation_memory(tiny_pipeline, frames, given_frames=1).device < video_task.device
    assert generation_memory(tiny_pipeline, frames, given_frames=0).device < video_task.device
    # A prefix leaving at most half a window to fill is co-decoded (span_frames), and counted so.
    assert generation_memory(tiny_pipeline, frames, given_frames=frames - window // 2).device == video_task.device

    class Checked(Exception):
        pass

    def record(num_frames, guided=True, input_frames=None, given_frames=None):
        raise Checked(given_frames)

    monkeypatch.setattr(tiny_pipeline, "check_request", record)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    calls = {"text2video": lambda: tiny_pipeline.text_to_video("a red circle", num_frames=frames),
             "image2video": lambda: tiny_pipeline.image_to_video(image, num_frames=frames),
             "predict": lambda: tiny_pipeline.image_to_video(np.stack([image] * 3), num_frames=frames),
             "inpaint": lambda: tiny_pipeline.inpaint(np.stack([image] * frames), np.ones((32, 32), dtype=bool))}
    given = {}
    for task, call in calls.items():
        with pytest.raises(Checked) as checked:
            call()
        given[task] = checked.value.args[0]
    assert given == {"text2video": 0, "image2video": 1, "predict": 3, "inpaint": None}


def test_a_long_edit_co_decodes_fewer_windows_where_four_would_not_fit(tiny_pipeline, monkeypatch):
    """Co-decoding's log-probabilities grow with the span: under a limit between the estimates of spans of two
    and three windows, a long inpaint decodes two windows at a time instead of being refused; under one window's
    estimate it is refused."""
    window = tiny_pipeline.defaults.num_frames
    frames = 2 * SPAN_WINDOWS * window
    estimates = [generation_memory(tiny_pipeline, frames, span_windows=windows)
                 for windows in range(1, SPAN_WINDOWS + 1)]
    needs = [estimate.host + estimate.device for estimate in estimates]  # on a CPU: one pool
    assert needs == sorted(set(needs))
    spans = []
    run = LongVideo.run
    monkeypatch.setattr(LongVideo, "run", lambda video, sample, window, context, span: spans.append(span) or run(
        video, sample, window, context, span))
    video = np.zeros((frames, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(tiny_pipeline, "memory_limit_gb", (needs[1] + needs[2]) / 2 / 1024**3)
    assert len(tiny_pipeline.inpaint(video, box=(8, 8, 24, 24), steps=1).frames) == frames
    assert spans == [2 * window]
    monkeypatch.setattr(tiny_pipeline, "memory_limit_gb", 0.99 * needs[0] / 1024**3)
    with pytest.raises(MemoryLimitError, match=f"{frames} frames of 32x32, {window}-frame spans"):
        tiny_pipeline.inpaint(video, box=(8, 8, 24, 24), steps=1)


@pytest.mark.parametrize("task, inputs, given", [("text2video", {}, 0), ("image2video", {"image": "x.png"}, 1),
                                                 ("action2video", {"image": "x.png", "actions": "a.csv"}, 1)])
def test_wd_generate_tells_the_estimate_how_many_frames_a_rollout_is_given(tiny_pipeline, tmp_path, task, inputs,
                                                                          given):
    (tmp_path / "a.csv").write_text("0,1\n0,1\n0,1\n")
    args = GenerateArgs(task, tmp_path, tmp_path / "o.mp4", frames=12,
                        **{name: tmp_path / value for name, value in inputs.items()})
    size = request_size(tiny_pipeline, args)
    assert size.given_frames == given and size.frames == (3 if "actions" in inputs else 12)


def test_pipeline_defaults_too_large_for_the_memory_are_refused_at_load(tiny_pipeline, tmp_path):
    huge = WorldDreamerPipeline(tiny_pipeline.tokenizer, tiny_pipeline.stpt, tiny_pipeline.text_encoder,
                                dataclasses.replace(tiny_pipeline.defaults, height=8192, width=8192))
    huge.save_pretrained(tmp_path / "huge")
    with pytest.raises(ValueError, match=r"huge/pipeline\.json: its defaults ask for too much: this request needs "
                                         r"about \d+\.\d GiB of memory \(4 frames of 8192x8192"):
        WorldDreamerPipeline.from_pretrained(tmp_path / "huge", device="cpu")
    assert WorldDreamerPipeline.from_pretrained(tmp_path / "huge", device="cpu", memory_limit_gb=1e6)


def test_actions_that_overflow_the_model_are_refused(tiny_pipeline, tiny_pipeline_dir, tmp_path, model_never_runs):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"actions must be at most 10000 times the model's action_scale"):
        tiny_pipeline.action_to_video(image, [[1e30, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="actions must be finite numbers"):
        tiny_pipeline.action_to_video(image, np.array([[np.nan, 0.0]]))
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(image).save(tmp_path / "first.png")
    (tmp_path / "actions.csv").write_text("1e30,0\n0,0\n")
    code, lines = run("--task", "action2video", "--image", tmp_path / "first.png", "--actions",
                      tmp_path / "actions.csv", "--checkpoint", tiny_pipeline_dir, "--out", tmp_path / "o.mp4",
                      "--no-progress")
    assert code == 1 and len(lines) == 1 and "actions must be at most 10000 times" in lines[0], lines


def test_weights_holding_nan_are_refused_naming_the_tensor(tiny_pipeline, tmp_path):
    stpt = type(tiny_pipeline.stpt)(tiny_pipeline.stpt.config)
    stpt.load_state_dict(tiny_pipeline.stpt.state_dict())
    with torch.no_grad():
        stpt.head.weight[0, 0] = float("nan")
    WorldDreamerPipeline(tiny_pipeline.tokenizer, stpt, tiny_pipeline.text_encoder,
                         tiny_pipeline.defaults).save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"nan/stpt: tensor head\.weight holds NaN or inf"):
        WorldDreamerPipeline.from_pretrained(tmp_path / "nan")


def test_a_newer_format_is_an_error_and_newer_packages_a_warning(tiny_pipeline_dir, tmp_path, without_checksums):
    legacy = without_checksums(shutil.copytree(tiny_pipeline_dir, tmp_path / "pipe"))
    config = json.loads((legacy / "pipeline.json").read_text())
    (legacy / "pipeline.json").write_text(json.dumps({**config, "format_version": 2}))
    code, lines = text2video(legacy, tmp_path / "o.gif")
    assert code == 1 and lines == [f"Error: {legacy / 'pipeline.json'} has format_version 2, newer than format 1, "
                                   "which this wd-cli 0.1.0 reads; upgrade wd-cli to load it"], lines
    newer = {**config["versions"], "wd-stpt": "99.0"}
    (legacy / "pipeline.json").write_text(json.dumps({**config, "versions": newer}))
    code, lines = text2video(legacy, tmp_path / "o.gif")
    assert code == 0 and lines[0] == (f"Warning: {legacy / 'pipeline.json'} was saved with wd-stpt 99.0, newer than "
                                      "the installed 0.1.0; if it does not load, upgrade wd-stpt"), lines


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_frames", 8.5, "defaults.num_frames must be an integer, got 8.5"),
    ("num_frames", "32", "defaults.num_frames must be an integer, got '32'"),
    ("guidance_scale", None, "defaults.guidance_scale must be a finite number, got None"),
    ("top_k", 2.5, "defaults.top_k must be int | None, got 2.5"),
])
def test_pipeline_json_types_name_the_file_and_field(tiny_pipeline_dir, tmp_path, without_checksums, field, value,
                                                     message):
    legacy = without_checksums(shutil.copytree(tiny_pipeline_dir, tmp_path / "pipe"))
    config = json.loads((legacy / "pipeline.json").read_text())
    config["defaults"][field] = value
    (legacy / "pipeline.json").write_text(json.dumps(config))
    code, lines = text2video(legacy, tmp_path / "o.gif")
    assert code == 1 and lines == [f"Error: {legacy / 'pipeline.json'}: bad defaults: {message}"], lines


TASK_CALLS = {  # task -> (a call of the Python API on a 5-frame video / 32x32 image, the frames it would output)
    "text2video": (lambda p, image, video: p.text_to_video("x", num_frames=6), 6),
    "text2video+actions": (lambda p, image, video: p.text_to_video("x", np.zeros((7, 2))), 7),
    "image2video": (lambda p, image, video: p.image_to_video(image, num_frames=5), 5),
    "predict": (lambda p, image, video: p.image_to_video(video, num_frames=9), 9),
    "action2video": (lambda p, image, video: p.action_to_video(image, np.zeros((3, 2))), 3),
    "interpolate": (lambda p, image, video: p.interpolate(video, 3), 13),
    "inpaint": (lambda p, image, video: p.inpaint(video, box=(0, 0, 8, 8)), 5),
    "outpaint": (lambda p, image, video: p.outpaint(video), 5),
    "stylize": (lambda p, image, video: p.stylize(video, "x"), 5),
}


@pytest.mark.parametrize("task", TASK_CALLS)
def test_every_task_checks_its_memory_before_it_encodes_or_samples(tiny_pipeline, model_never_runs, monkeypatch,
                                                                   task):
    limited = WorldDreamerPipeline(tiny_pipeline.tokenizer, tiny_pipeline.stpt, tiny_pipeline.text_encoder,
                                   tiny_pipeline.defaults)
    limited.memory_limit_gb = 1e-6

    def refuse(*args, **kwargs):
        raise AssertionError("the input was encoded")

    monkeypatch.setattr(WorldDreamerPipeline, "encode", refuse)
    call, frames = TASK_CALLS[task]
    image, video = np.zeros((32, 32, 3), dtype=np.uint8), np.zeros((5, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(MemoryLimitError, match=rf"about [\d.]+ [MG]iB of memory \({frames} frames of 32x32, "):
        call(limited, image, video)


@pytest.mark.parametrize(("task", "extra", "frames"), [
    ("predict", ["--video", "video.mp4", "--frames", "100000"], 100000),
    ("interpolate", ["--video", "video.mp4", "--every", "50000"], 200001),
    ("interpolate", ["--video", "video.mp4", "--frames", "100001"], 100001),
    ("text2video", ["--prompt", "x", "--actions", "actions.csv"], 100000),
    ("action2video", ["--image", "image.png", "--actions", "actions.csv"], 100000),
])
def test_the_cli_estimates_each_task_s_request_before_the_model_runs(tiny_pipeline, tiny_pipeline_dir, tmp_path,
                                                                     model_never_runs, task, extra, frames):
    from wd_data import write_video

    from wd_cli.limits import GIB

    write_video(tmp_path / "video.mp4", np.zeros((5, 32, 32, 3), dtype=np.uint8), fps=4)
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    (tmp_path / "actions.csv").write_text("0,0\n" * 100000)
    window = generation_memory(tiny_pipeline, tiny_pipeline.defaults.num_frames)
    limit = 4 * (window.host + window.device) / GIB  # the pipeline's own window fits, the request does not
    extra = [str(tmp_path / value) if (tmp_path / value).is_file() else value for value in extra]
    code, lines = run("--task", task, *extra, "--checkpoint", tiny_pipeline_dir, "--out", tmp_path / "o.mp4",
                      "--memory-limit", str(limit), "--no-progress", "--device", "cpu")
    assert code == 1 and len(lines) == 1 and f" of memory ({frames} frames of 32x32" in lines[0], lines
    assert not (tmp_path / "o.mp4").exists()
