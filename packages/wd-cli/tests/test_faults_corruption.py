"""Byte-level corruption of every file of a pipeline directory and of a run directory: truncated, zeroed, bytes
flipped, JSON values of the wrong type. `wd generate`, `wd train stpt` (resume) and `wd train export` give a
one-line error or the right result (the reference tokens or weights), never a traceback or a silently other one."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from wd_tokenizer.checkpoints import checkpoint_dirs
from wd_tokenizer.io import read_tensors

from wd_cli.main import cli
from wd_cli.train import train_stpt
from wd_cli.train.configfile import dump_yaml

WRONG_TYPES = {int: ["32", 8.5], float: ["0.5", [1.0]], str: [7, None], bool: [1, "true"], list: [{"a": 1}, "1,2"],
               dict: [[1], "x"], type(None): [[], "none"]}


def byte_damages(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Truncated (empty, half), zeroed, and one byte flipped near the start, middle and end."""
    yield "empty", b""
    yield "half", data[: len(data) // 2]
    yield "zeros", bytes(len(data))
    for where in (0.05, 0.5, 0.95):
        flipped = bytearray(data)
        flipped[int(where * (len(data) - 1))] ^= 0x24
        yield f"flip@{where}", bytes(flipped)


def json_damages(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Each value (and each value of a nested table) replaced by values of other types."""
    config = json.loads(data)
    paths = [(key,) for key in config] + [(key, inner) for key, value in config.items() if isinstance(value, dict)
                                          for inner in value]
    for path in paths:
        *parents, last = path
        node = config
        for part in parents:
            node = node[part]
        original = node[last]
        for wrong in WRONG_TYPES[type(original)]:
            node[last] = wrong
            yield f"{'.'.join(path)}={wrong!r}", json.dumps(config).encode()
        node[last] = original


def damages(path: Path) -> Iterator[tuple[str, bytes]]:
    data = path.read_bytes()
    yield from byte_damages(data)
    if path.suffix == ".json":
        yield from json_damages(data)


def one_line_error_or(result, check, printed: str = "wrote ") -> str:
    """Either the command failed with exactly one `Error:` line (one-line warnings before it allowed), or it
    succeeded, printing warnings and a line starting with `printed`, and `check()` holds; -> "error" or "ok".
    Never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and "Aborted" not in result.output, result.output
    assert all(line.startswith(("Warning: ", "Error: ", printed)) for line in lines), result.output
    if result.exit_code != 0:
        assert [line for line in lines if line.startswith("Error: ")] == [lines[-1]], result.output
        return "error"
    check()
    return "ok"


def generate(checkpoint: Path, out: Path):
    return CliRunner().invoke(cli, ["generate", "--task", "text2video", "--prompt", "a red circle", "--checkpoint",
                                    str(checkpoint), "--out", str(out / "v.gif"), "--tokens-out", str(out / "t.npy"),
                                    "--steps", "2", "--no-progress", "--device", "cpu"])


@pytest.fixture(scope="module")
def reference_tokens(tiny_pipeline_dir: Path, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("reference")
    assert generate(tiny_pipeline_dir, out).exit_code == 0
    return np.load(out / "t.npy")


PIPELINE_FILES = ["pipeline.json", "stpt/config.json", "stpt/model.safetensors", "tokenizer/config.json",
                  "tokenizer/model.safetensors", "text_encoder/config.json"]


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_every_damage_to_a_pipeline_file_is_one_line_or_harmless(tiny_pipeline_dir, reference_tokens, tmp_path,
                                                                  name):
    files = sorted(str(path.relative_to(tiny_pipeline_dir)) for path in tiny_pipeline_dir.rglob("*.*"))
    assert files == sorted(PIPELINE_FILES)  # every file is covered
    outcomes = {}
    for index, (damage, data) in enumerate(damages(tiny_pipeline_dir / name)):
        broken, out = tmp_path / f"pipe{index}", tmp_path / f"out{index}"
        shutil.copytree(tiny_pipeline_dir, broken)
        (broken / name).write_bytes(data)
        out.mkdir()
        outcomes[damage] = one_line_error_or(generate(broken, out),
                                             lambda: np.testing.assert_array_equal(np.load(out / "t.npy"),
                                                                                   reference_tokens))
    assert outcomes["empty"] == outcomes["flip@0.5"] == "error", outcomes  # checksums see every changed byte


@pytest.mark.parametrize("name", ["stpt/config.json", "tokenizer/config.json", "text_encoder/config.json",
                                  "pipeline.json"])
def test_wrong_types_without_checksums_are_one_line_errors(tiny_pipeline_dir, reference_tokens, without_checksums,
                                                           tmp_path, name):
    """A pipeline saved before checksums existed: every field is still type-checked, naming the file."""
    legacy = without_checksums(shutil.copytree(tiny_pipeline_dir, tmp_path / "legacy"))
    for index, (damage, data) in enumerate(json_damages((legacy / name).read_bytes())):
        broken, out = tmp_path / f"pipe{index}", tmp_path / f"out{index}"
        shutil.copytree(legacy, broken)
        (broken / name).write_bytes(data)
        out.mkdir()
        result = generate(broken, out)
        outcome = one_line_error_or(result, lambda: np.testing.assert_array_equal(np.load(out / "t.npy"),
                                                                                  reference_tokens))
        if outcome == "error" and not damage.startswith(("files", "checksum")):
            assert str(broken) in result.output, (damage, result.output)


@pytest.fixture(scope="module")
def damaged_run_template(tiny_run_config, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run holding checkpoints 1-3 (of a 4-step config), and the weights 4 uninterrupted steps end with."""
    root = tmp_path_factory.mktemp("runs")
    straight = train_stpt(tiny_run_config(4), root / "straight", progress=False).state_dict()
    config = tiny_run_config(4)
    (root / "config.yaml").write_text(dump_yaml(config))
    train_stpt(tiny_run_config(3), root / "template", progress=False)
    return root, straight


RUN_FILES = ["config.yaml", "metrics.jsonl", "train.lock", "checkpoints/step_0000003/manifest.json",
             "checkpoints/step_0000003/trainer_state.pt", "checkpoints/step_0000003/model/config.json",
             "checkpoints/step_0000003/model/model.safetensors"]


@pytest.mark.parametrize("name", RUN_FILES)
def test_every_damage_to_a_run_file_is_one_line_or_resumes_right(damaged_run_template, tmp_path, name):
    root, straight = damaged_run_template
    template = root / "template"
    if name == "train.lock":  # as a killed trainer leaves it
        (template / name).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then", "command": "wd"}))
    outcomes = {}
    for index, (damage, data) in enumerate(damages(template / name)):
        run = shutil.copytree(template, tmp_path / f"run{index}")
        (run / name).write_bytes(data)

        def resumed_right() -> None:
            weights = read_tensors(checkpoint_dirs(run)[-1] / "model" / "model.safetensors")
            for key, tensor in straight.items():
                assert torch.equal(weights[key], tensor), (damage, key)
            steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert steps == sorted(set(steps)) and steps[-1] == 4, (damage, steps)

        result = CliRunner().invoke(cli, ["train", "stpt", "-c", str(root / "config.yaml"), "--no-progress",
                                          str(run)])
        outcomes[damage] = one_line_error_or(result, resumed_right, printed="Warning: ")
    # A damaged newest checkpoint is passed over; the other files are rewritten or read leniently.
    assert set(outcomes.values()) == {"ok"}, outcomes


@pytest.mark.parametrize("name", ["config.yaml", "checkpoints/step_0000003/model/model.safetensors"])
def test_every_damage_to_a_run_file_is_one_line_or_a_whole_export(damaged_run_template, run_parts, tmp_path, name):
    root, _ = damaged_run_template
    template = root / "template"
    whole = [read_tensors(checkpoint / "model" / "model.safetensors") for checkpoint in checkpoint_dirs(template)]
    outcomes = {}
    for index, (damage, data) in enumerate([("intact", (template / name).read_bytes()), *damages(template / name)]):
        run = shutil.copytree(template, tmp_path / f"run{index}")
        (run / name).write_bytes(data)
        out = tmp_path / f"pipe{index}"

        def exported_a_whole_checkpoint() -> None:
            from wd_cli.pipeline import WorldDreamerPipeline

            stpt = WorldDreamerPipeline.from_pretrained(out).stpt.state_dict()
            assert any(all(torch.equal(stpt[key], weights[key]) for key in weights) for weights in whole), damage

        result = CliRunner().invoke(cli, ["train", "export", str(run), str(out), "--tokenizer", str(run_parts[0]),
                                          "--text-encoder", str(run_parts[1])])
        outcomes[damage] = one_line_error_or(result, exported_a_whole_checkpoint, printed=str(out))
    assert outcomes["intact"] == "ok", outcomes
    if name.endswith(".safetensors"):  # the damaged newest checkpoint is passed over: the one before is exported
        assert set(outcomes.values()) == {"ok"}, outcomes


def test_a_damaged_newest_tokenizer_checkpoint_is_passed_over(tiny_vqgan_dir, tmp_path):
    """A `wd train tokenizer` run given as a tokenizer: its newest checkpoint whose files match their manifest is
    used, each newer damaged one skipped with a warning naming it; none whole is a one-line error."""
    from wd_tokenizer.checkpoints import staged_checkpoint

    from wd_cli.train.configfile import ConfigError
    from wd_cli.train.tokenizer import vqgan_dir

    run = tmp_path / "run"
    for step in (1, 2):
        with staged_checkpoint(run, step) as staging:
            shutil.copytree(tiny_vqgan_dir, staging / "model")
    assert vqgan_dir(run) == run / "checkpoints" / "step_0000002" / "model"
    newest = run / "checkpoints" / "step_0000002" / "model" / "model.safetensors"
    for damage, data in byte_damages(newest.read_bytes()):
        newest.write_bytes(data)
        with pytest.warns(UserWarning, match=r"skipping tokenizer checkpoint step_0000002: ") as caught:
            assert vqgan_dir(run) == run / "checkpoints" / "step_0000001" / "model", damage
        assert all("\n" not in str(warning.message) for warning in caught)
    (run / "checkpoints" / "step_0000001" / "model" / "config.json").write_text("{}")
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match=f"no checkpoint of the tokenizer run {run} "
                                                                     "is whole"):
        vqgan_dir(run)
