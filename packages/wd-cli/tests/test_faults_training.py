"""Training faults: non-finite losses and weights, a second trainer on one run directory, a damaged newest
checkpoint. Each ends in one line (or a warning and the right result); nothing already saved is lost."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from wd_tokenizer.checkpoints import checkpoint_dirs
from wd_tokenizer.io import read_tensors

from wd_cli.main import cli
from wd_cli.train import train_stpt
from wd_cli.train.checkpoint import TRAINER_STATE
from wd_cli.train.configfile import dump_yaml
from wd_cli.train.objective import MaskedTokenObjective
from wd_cli.train.parallel import DistributedEnv
from wd_cli.train.trainer import STPTTrainer


def train_cli(config, run_dir: Path, *extra: str) -> tuple[int, list[str]]:
    """`wd train stpt` in-process -> (exit code, output lines); asserts there is no traceback."""
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(dump_yaml(config))
    result = CliRunner().invoke(cli, ["train", "stpt", "-c", str(path), "--no-progress", *extra, str(run_dir)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Aborted" not in result.output, result.output
    return result.exit_code, result.output.strip().splitlines()


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def nan_loss_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """The objective returns a NaN loss on the given calls (1-based; None: on every call)."""
    real, count = MaskedTokenObjective.__call__, [0]

    def poisoned(self, *args, **kwargs):
        count[0] += 1
        loss, accuracy = real(self, *args, **kwargs)
        return (loss * math.nan if calls is None or count[0] in calls else loss), accuracy

    monkeypatch.setattr(MaskedTokenObjective, "__call__", poisoned)


def test_a_non_finite_step_changes_nothing_and_is_counted(tiny_run_config, tmp_path, monkeypatch):
    trainer = STPTTrainer(tiny_run_config(3), tmp_path, DistributedEnv(0, 1, torch.device("cpu")))
    first = trainer.train_step()
    assert first["skipped"] == 0.0
    weights = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    moments = {key: value.clone() for key, value in trainer.optimizer.state_dict()["state"][0].items()}
    lr_step = trainer.scheduler.last_epoch
    nan_loss_on_calls(monkeypatch, None)
    logs = trainer.train_step()
    assert logs["skipped"] == 1.0 and math.isnan(logs["loss"]) and trainer.skipped.total == 1
    assert all(torch.equal(tensor, weights[name]) for name, tensor in trainer.model.state_dict().items())
    assert all(torch.equal(value, moments[key]) for key, value in trainer.optimizer.state_dict()["state"][0].items())
    assert trainer.scheduler.last_epoch == lr_step and trainer.step == 2
    assert all(param.grad is None for param in trainer.model.parameters())
    monkeypatch.undo()
    assert trainer.train_step()["skipped"] == 0.0 and trainer.skipped.in_a_row == 0


def test_skips_are_logged_saved_and_survive_a_resume(tiny_run_config, tmp_path, monkeypatch):
    nan_loss_on_calls(monkeypatch, {2})
    train_stpt(tiny_run_config(3), tmp_path, progress=False)
    lines = metrics(tmp_path)
    assert [line["skipped"] for line in lines] == [0.0, 1.0, 0.0] and lines[1]["loss"] is None  # valid JSON
    assert [line["skipped_steps"] for line in lines] == [0, 1, 1]
    state = torch.load(checkpoint_dirs(tmp_path)[-1] / TRAINER_STATE, weights_only=True)
    assert state["skipped_steps"] == 1 and state["scheduler"]["last_epoch"] == 2  # the lr schedule did not move
    monkeypatch.undo()
    train_stpt(tiny_run_config(4), tmp_path, progress=False)
    assert metrics(tmp_path)[-1]["skipped_steps"] == 1


def test_too_many_skips_in_a_row_stop_in_one_line(tiny_run_config, tmp_path, monkeypatch):
    nan_loss_on_calls(monkeypatch, None)
    code, lines = train_cli(tiny_run_config(10), tmp_path / "run", "--set", "train.max_nonfinite_steps=3")
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("Error: training diverged: 3 steps in a row had a non-finite loss or gradient")
    assert "(the last, step 3: loss nan" in lines[0] and "train.max_nonfinite_steps" in lines[0]
    for checkpoint in checkpoint_dirs(tmp_path / "run"):  # saved after skips: the untouched, finite weights
        assert all(torch.isfinite(t).all() for t in read_tensors(checkpoint / "model" / "model.safetensors").values())


def test_non_finite_weights_are_never_written(tiny_run_config, tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step

    def step_then_overflow(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        if self.state and len(next(iter(self.state.values()))) and self.param_groups[0]["params"]:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.inf)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_overflow)
    code, lines = train_cli(tiny_run_config(3), tmp_path / "run")
    assert code == 1 and len(lines) == 1 and "holds NaN or inf at step 1; checkpoint not written" in lines[0], lines
    assert checkpoint_dirs(tmp_path / "run") == []


@pytest.mark.parametrize(("setting", "message"), [
    ("optim.lr=inf", "optim.lr: expected a finite number, got inf"),
    ("optim.lr=nan", "optim.lr: expected a finite number, got nan"),
    ("optim.betas=[0.9, nan]", "optim.betas.1: expected a finite number"),
    ("optim.weight_decay=-inf", "optim.weight_decay: expected a finite number"),
    ("optim.grad_clip=inf", "optim.grad_clip: expected a finite number"),
    ("train.max_minutes=nan", "train.max_minutes: expected a finite number"),
    ("optim.betas=[0.9, 1.5]", "optim.betas must be in [0, 1)"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps: must be >= 1"),
])
def test_non_finite_settings_are_one_line_errors(tiny_run_config, tmp_path, setting, message):
    code, lines = train_cli(tiny_run_config(2), tmp_path / "run", "--set", setting)
    assert code == 1 and lines == [f"Error: {lines[0].removeprefix('Error: ')}"] and message in lines[0], lines
    assert not (tmp_path / "run").exists()


HOLDER = """
import sys, time
from wd_tokenizer.runlock import hold_run_directory
with hold_run_directory(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_trainer_per_run_directory_and_stale_locks_are_taken_over(tiny_run_config, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, lines = train_cli(tiny_run_config(2), run)
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"Error: {run} is in use by another trainer (pid {holder.pid} on host ")
        assert "started " in lines[0] and f"lock file {run / 'train.lock'}" in lines[0]
        assert sorted(path.name for path in run.iterdir()) == ["train.lock"]  # the second trainer wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, lines = train_cli(tiny_run_config(2), run)  # the kernel dropped the dead holder's lock
    assert code == 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"Warning: taking over {run / 'train.lock'} from a trainer that is no longer "
                               f"running (pid {holder.pid} on host ")
    assert (run / "train.lock").read_text() == ""  # released: the next start takes it without a word
    assert [path.name for path in checkpoint_dirs(run)] == ["step_0000001", "step_0000002"]


@pytest.fixture(scope="module")
def straight_run(tiny_run_config, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of 4 uninterrupted steps."""
    return train_stpt(tiny_run_config(4), tmp_path_factory.mktemp("straight"), progress=False).state_dict()


def damage_newest(run: Path, damage: str) -> str:
    """Damage the newest checkpoint of `run` in one of several ways; -> the reason the warning gives."""
    newest = checkpoint_dirs(run)[-1]
    if damage == "empty trainer state":
        (newest / TRAINER_STATE).write_bytes(b"")
        return "is damaged or was changed"
    if damage == "flipped weight byte":
        weights = newest / "model" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-7] ^= 0x10
        weights.write_bytes(bytes(data))
        return "is damaged or was changed"
    if damage == "no manifest, empty trainer state":  # a checkpoint written before manifests existed
        (newest / "manifest.json").unlink()
        (newest / TRAINER_STATE).write_bytes(b"")
        return "the file is empty or cut short"
    (newest / "manifest.json").write_text("{")
    return "manifest.json is not valid JSON"


@pytest.mark.parametrize("damage", ["empty trainer state", "flipped weight byte", "no manifest, empty trainer state",
                                    "broken manifest"])
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tiny_run_config, straight_run, tmp_path, damage):
    run = tmp_path / "run"
    train_stpt(tiny_run_config(3), run, progress=False)
    reason = damage_newest(run, damage)
    code, lines = train_cli(tiny_run_config(4), run)
    assert code == 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"Warning: skipping checkpoint step_0000003: cannot resume from {run}"), lines
    assert reason in lines[0], lines
    model = read_tensors(checkpoint_dirs(run)[-1] / "model" / "model.safetensors")
    for name, tensor in straight_run.items():  # resumed from step 2: the weights of a run never interrupted
        torch.testing.assert_close(model[name], tensor, atol=0, rtol=0)
    assert [line["step"] for line in metrics(run)] == [1, 2, 3, 4]


def test_no_checkpoint_that_loads_is_one_line(tiny_run_config, tmp_path):
    run = tmp_path / "run"
    train_stpt(tiny_run_config(2), run, progress=False)
    for checkpoint in checkpoint_dirs(run):
        (checkpoint / TRAINER_STATE).write_bytes(b"")
    code, lines = train_cli(tiny_run_config(4), run)
    assert code == 1 and [line.split(":")[0] for line in lines] == ["Warning", "Warning", "Error"], lines
    assert lines[-1] == f"Error: no checkpoint of {run} loads (see the warnings); --resume none starts over, or " \
                        "move the damaged ones away"
    code, lines = train_cli(tiny_run_config(4), run, "--resume", str(checkpoint_dirs(run)[0]))
    assert code == 1 and len(lines) == 1 and "is damaged or was changed" in lines[0], lines


RANK_SCRIPT = """
import atexit, math, os, sys, torch
from pathlib import Path
from safetensors.torch import save_file
# Registered before train_stpt, so it runs after the trainer's own exit handler (atexit runs them last-in first-out).
atexit.register(lambda: Path(sys.argv[2], f"group-at-exit{os.environ['RANK']}").write_text(
    str(torch.distributed.is_initialized())))
from wd_cli.train import STPTRunConfig, load_config, train_stpt
from wd_cli.train.objective import MaskedTokenObjective
real, calls = MaskedTokenObjective.__call__, [0]
def nan_on_rank_1_at_step_2(self, model, batch, masks, rank, world_size):
    calls[0] += 1
    loss, accuracy = real(self, model, batch, masks, rank, world_size)
    return (loss * math.nan if rank == 1 and calls[0] == 2 else loss), accuracy
MaskedTokenObjective.__call__ = nan_on_rank_1_at_step_2
model = train_stpt(load_config(STPTRunConfig, sys.argv[1]), sys.argv[2], progress=False)
rank = torch.distributed.get_rank()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{sys.argv[2]}/rank{rank}.st")
"""


@pytest.mark.distributed
def test_ranks_agree_to_skip_a_step_only_one_of_them_found_non_finite(tiny_run_config, tmp_path):
    from safetensors.torch import load_file

    from wd_cli.train import TrainSection

    (tmp_path / "config.yaml").write_text(dump_yaml(tiny_run_config(3, train=TrainSection(steps=3, device="cpu"))))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "rank.py"), str(tmp_path / "config.yaml"), str(tmp_path / "run")]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "run" / f"rank{rank}.st") for rank in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert [line["skipped"] for line in metrics(tmp_path / "run")] == [0.0, 1.0, 0.0]
    # The script never closed the process group: the trainer's exit handler did, before interpreter teardown (a
    # group left to the teardown aborted a rank now and then: SIGABRT after a finished run).
    assert [(tmp_path / "run" / f"group-at-exit{rank}").read_text() for rank in (0, 1)] == ["False", "False"]
