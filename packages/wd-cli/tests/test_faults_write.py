"""A filesystem that fails: os.replace / os.rename / os.mkdir / open raise ENOSPC or EIO at their n-th call, for
every n, and native writers (safetensors, torch.save, PyAV) hit a file size limit. Checkpoint saves, pipeline
saves and `wd generate`'s outputs each end in one line naming the user's file, keep the previous good state and
leave no temporary file."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import io
import os
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from wd_stpt import STPT, get_config
from wd_tokenizer.checkpoints import CheckpointWriteError, checkpoint_dirs
from wd_tokenizer.io import directory_digests

import wd_cli.generate
from wd_cli.main import cli
from wd_cli.media import read_frames
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.train.checkpoint import read_checkpoint, save_checkpoint
from wd_cli.train.configfile import dump_yaml
from wd_cli.train.parallel import DistributedEnv

FILE_OPERATIONS = ((os, "replace"), (os, "rename"), (os, "mkdir"), (builtins, "open"), (io, "open"))


@contextlib.contextmanager
def failing_filesystem(fail_at: int, error_number: int) -> Iterator[list[int]]:
    """The `fail_at`-th file operation (1-based; 0: none) raises OSError(error_number); yields [calls so far]."""
    calls = [0]
    real = {(owner, name): getattr(owner, name) for owner, name in FILE_OPERATIONS}

    def hooked(function):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == fail_at:
                raise OSError(error_number, os.strerror(error_number))
            return function(*args, **kwargs)
        return call

    hooks = {}
    for (owner, name), function in real.items():
        hooks.setdefault(function, hooked(function))  # builtins.open is io.open: one hook, counted once
        setattr(owner, name, hooks[function])
    try:
        yield calls
    finally:
        for (owner, name), function in real.items():
            setattr(owner, name, function)


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes past `size` bytes fail with EFBIG (SIGXFSZ ignored), in native writers too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def hidden_entries(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob(".*"))


@pytest.fixture(scope="module")
def trainer_parts():
    torch.manual_seed(0)
    model = STPT(get_config("tiny", codebook_size=16, text_dim=8, width=32, depth=2, num_heads=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 2, 4, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _save(parts, run: Path, step: int) -> None:
    model, optimizer, scheduler = parts
    save_checkpoint(run, step, model, model.config, optimizer, scheduler, None, {"position": torch.zeros(1)}, 2,
                    DistributedEnv(0, 1, torch.device("cpu")))


def _check_checkpoint_failure(error: CheckpointWriteError, run: Path, reason: str) -> None:
    text = str(error)
    assert "\n" not in text and reason in text and ".tmp" not in text, text
    listed = [path.name for path in checkpoint_dirs(run)]
    assert listed[:2] in (["step_0000001", "step_0000002"], ["step_0000002", "step_0000003"]), listed
    for directory in checkpoint_dirs(run):
        read_checkpoint(directory, with_ema=False)
    assert hidden_entries(run / "checkpoints") == []


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EIO])
def test_checkpoint_save_fails_at_each_file_operation(trainer_parts, tmp_path, error_number):
    template = tmp_path / "template"
    _save(trainer_parts, template, 1)
    _save(trainer_parts, template, 2)
    shutil.copytree(template, tmp_path / "count")
    with failing_filesystem(0, error_number) as calls:
        _save(trainer_parts, tmp_path / "count", 3)
    assert calls[0] >= 8
    failures = 0
    for fail_at in range(1, calls[0] + 1):
        run = tmp_path / f"at{fail_at}"
        shutil.copytree(template, run)
        try:
            with failing_filesystem(fail_at, error_number):
                _save(trainer_parts, run, 3)
        except CheckpointWriteError as error:
            _check_checkpoint_failure(error, run, os.strerror(error_number))
            failures += 1
        else:  # the failed call did not matter (mkdir of a folder that exists): a complete save
            assert [path.name for path in checkpoint_dirs(run)] == ["step_0000002", "step_0000003"]
    assert failures >= calls[0] - 2


@pytest.mark.parametrize("size", [0, 200, 20_000, 200_000])
def test_checkpoint_save_past_a_file_size_limit(trainer_parts, tmp_path, size):
    """Native writers (safetensors, torch.save) fail too: one line with the system's reason, nothing left."""
    _save(trainer_parts, tmp_path, 1)
    _save(trainer_parts, tmp_path, 2)
    with pytest.raises(CheckpointWriteError) as raised, file_size_limit(size):
        _save(trainer_parts, tmp_path, 3)
    _check_checkpoint_failure(raised.value, tmp_path, "File too large")


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EIO])
def test_pipeline_save_fails_at_each_file_operation(tiny_pipeline, tiny_pipeline_dir, tmp_path, error_number):
    """Replacing a pipeline directory with another (other defaults): it changes whole, or not at all."""
    other = WorldDreamerPipeline(tiny_pipeline.tokenizer, tiny_pipeline.stpt, tiny_pipeline.text_encoder,
                                 dataclasses.replace(tiny_pipeline.defaults, steps=2))
    shutil.copytree(tiny_pipeline_dir, tmp_path / "count")
    with failing_filesystem(0, error_number) as calls:
        other.save_pretrained(tmp_path / "count")
    after = directory_digests(tmp_path / "count")
    shutil.rmtree(tmp_path / "count")
    before = directory_digests(tiny_pipeline_dir)
    failures = 0
    for fail_at in range(1, calls[0] + 1):
        target = tmp_path / "pipe"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tiny_pipeline_dir, target)
        try:
            with failing_filesystem(fail_at, error_number):
                other.save_pretrained(target)
        except OSError as error:
            text = str(error)
            assert "\n" not in text and os.strerror(error_number) in text and f"{target}" in text, text
            assert ".tmp" not in text and ".old" not in text, text
            assert directory_digests(target) == before  # the previous pipeline, byte for byte
            failures += 1
        else:  # the failed call did not matter (mkdir of a folder that exists): the new pipeline, whole
            assert directory_digests(target) == after
        assert [path.name for path in tmp_path.iterdir()] == ["pipe"] and hidden_entries(target) == []
    assert failures >= calls[0] // 2


def _generate(tiny_pipeline_dir: Path, out: Path, tokens: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["generate", "--task", "text2video", "--prompt", "a red circle", "--checkpoint",
                                      str(tiny_pipeline_dir), "--out", str(out), "--tokens-out", str(tokens),
                                      "--no-progress", "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_and_tokens_writes_fail_at_each_file_operation(tiny_pipeline_dir, tmp_path, monkeypatch, suffix):
    out, tokens = tmp_path / f"old{suffix}", tmp_path / "old.npy"
    assert _generate(tiny_pipeline_dir, out, tokens)[0] == 0
    shape, expected_tokens = read_frames(out).shape, np.load(tokens)  # H.264 encodes are not bit-reproducible
    real = wd_cli.generate.write_outputs
    fail_at = [0]

    def write_on_a_failing_disk(result, args, fps):
        with failing_filesystem(fail_at[0], errno.ENOSPC) as calls:
            real(result, args, fps)
        fail_at.append(calls[0])

    monkeypatch.setattr(wd_cli.generate, "write_outputs", write_on_a_failing_disk)
    assert _generate(tiny_pipeline_dir, out, tokens)[0] == 0  # counts the file operations of a write
    failures = 0
    for at in range(1, fail_at[-1] + 1):
        out.write_bytes(b"the previous video")  # what a failed write must leave as it was
        tokens.unlink(missing_ok=True)
        fail_at[0] = at
        code, output = _generate(tiny_pipeline_dir, out, tokens)
        lines = output.strip().splitlines()
        if code == 0:  # the failed call did not matter (mkdir of a folder that exists): both files, whole
            assert read_frames(out).shape == shape and np.array_equal(np.load(tokens), expected_tokens)
        else:
            assert len(lines) == 1 and "No space left on device" in lines[0], output
            assert str(out) in lines[0] or str(tokens) in lines[0], output
            assert ".tmp" not in lines[0] and f"/.{out.stem}." not in lines[0], output
            if out.read_bytes() != b"the previous video":  # the video was written, then the tokens failed
                assert read_frames(out).shape == shape
            failures += 1
        assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
    assert failures >= 2


def test_a_video_past_a_file_size_limit_names_the_users_file(tiny_pipeline_dir, tmp_path, monkeypatch):
    real = wd_cli.generate.write_outputs

    def write_on_a_small_disk(result, args, fps):
        with file_size_limit(500):
            real(result, args, fps)

    monkeypatch.setattr(wd_cli.generate, "write_outputs", write_on_a_small_disk)
    code, output = _generate(tiny_pipeline_dir, tmp_path / "big.mp4", tmp_path / "t.npy")
    assert code == 1 and output.strip() == f"Error: cannot write {tmp_path / 'big.mp4'}: File too large", output
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_cannot_be_written_stops_training_in_one_line(tiny_run_config, tmp_path, monkeypatch):
    (tmp_path / "run.yaml").write_text(dump_yaml(tiny_run_config(2)))
    args = ["train", "stpt", "-c", str(tmp_path / "run.yaml"), "--no-progress", str(tmp_path / "run")]
    real_save = torch.save
    saves = [0]

    def second_save_fails(state, handle):
        saves[0] += 1
        if saves[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(state, handle)

    monkeypatch.setattr(torch, "save", second_save_fails)
    result = CliRunner().invoke(cli, args)
    expected = (f"Error: cannot write checkpoint {tmp_path / 'run' / 'checkpoints' / 'step_0000002'}: No space left "
                "on device; the previous checkpoints are kept")
    assert result.exit_code == 1 and result.output.strip() == expected, result.output
    assert [path.name for path in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_0000001"]
