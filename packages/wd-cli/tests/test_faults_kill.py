"""kill -9 at every file operation of a checkpoint save and prune, and at delays spread over a run of saves: every
`step_*` directory left loads, what a killed save leaves is invisible to resume, and the next start removes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wd_tokenizer.checkpoints import checkpoint_dirs, checkpoint_step, remove_leftovers

from wd_cli.train.checkpoint import read_checkpoint

# Forks one child per kill point from a process that imported torch once (a fresh interpreter per point would
# take seconds each). "ops": the child SIGKILLs itself at its n-th mkdir/rename/replace/unlink/rmdir/open while
# saving step 3 into a copy of a run holding steps 1 and 2 (keep=2, so the save also prunes step 1). "delays": the
# child saves steps 3, 4, ... without end and the driver SIGKILLs it after each delay.
DRIVER = r"""
import builtins, io, json, os, shutil, signal, sys, time
from pathlib import Path
import torch
from wd_stpt import STPT, get_config
from wd_cli.train.checkpoint import save_checkpoint
from wd_cli.train.parallel import DistributedEnv

torch.set_num_threads(1)
work = Path(sys.argv[1])
torch.manual_seed(0)
model = STPT(get_config("tiny", codebook_size=16, text_dim=8, width=32, depth=2, num_heads=2, position_frames=2,
                        position_height=4, position_width=4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.zeros(1, 2, 4, 4, dtype=torch.long)).sum().backward()
optimizer.step()
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
env = DistributedEnv(0, 1, torch.device("cpu"))

def save(run, step):
    save_checkpoint(run, step, model, model.config, optimizer, scheduler, None, {"position": torch.zeros(1)}, 2, env)

template = work / "template"
save(template, 1)
save(template, 2)

def child(run, kill_at, once):
    calls = [0]
    def hooked(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call
    for name in ("mkdir", "rename", "replace", "unlink", "rmdir"):
        setattr(os, name, hooked(getattr(os, name)))
    builtins.open = io.open = hooked(io.open)
    step = 3
    while True:
        save(run, step)
        if once:
            (work / "calls").write_text(str(calls[0]))
            os._exit(0)
        step += 1

def fork(run, kill_at=0, delay=None):
    shutil.copytree(template, run)
    pid = os.fork()
    if pid == 0:
        child(run, kill_at, once=delay is None)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    return os.WIFSIGNALED(os.waitpid(pid, 0)[1])

fork(work / "count")
total = int((work / "calls").read_text())
runs = {"ops": [(str(work / f"op{n}"), fork(work / f"op{n}", kill_at=n)) for n in range(1, total + 1)]}
start = time.monotonic()
save(work / "timing", 1)
once = time.monotonic() - start
runs["delays"] = [(str(work / f"delay{n}"), fork(work / f"delay{n}", delay=n * 0.37 * once)) for n in range(12)]
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Path, bool]]]:
    """{"ops" | "delays": [(run directory, whether the save was killed)]}."""
    work = tmp_path_factory.mktemp("killed")
    (work / "driver.py").write_text(DRIVER)
    result = subprocess.run([sys.executable, str(work / "driver.py"), str(work)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.splitlines()[-1])
    return {mode: [(Path(run), killed) for run, killed in found] for mode, found in runs.items()}


def _check_left_state(run: Path) -> list[str]:
    """Every listed checkpoint reads whole; the newest is step 2 or later; leftovers go at the next start."""
    listed = checkpoint_dirs(run)
    for directory in listed:
        read_checkpoint(directory, with_ema=False)  # raises on anything half-written
    assert checkpoint_step(listed[-1]) >= 2, listed
    remove_leftovers(run)
    left = sorted(path.name for path in (run / "checkpoints").iterdir())
    assert all(name.startswith("step_") for name in left), left
    return [path.name for path in listed]


def test_kill_at_every_file_operation_of_a_save_and_prune(killed_runs):
    runs = killed_runs["ops"]
    assert len(runs) >= 10 and sum(killed for _, killed in runs) == len(runs)
    outcomes = {tuple(_check_left_state(run)) for run, _ in runs}
    # Killed before the rename: steps 1-2 stand; after it: step 3 too, step 1 until its prune completes.
    assert outcomes == {("step_0000001", "step_0000002"), ("step_0000001", "step_0000002", "step_0000003"),
                        ("step_0000002", "step_0000003")}


def test_kill_at_delays_spread_over_saves_and_prunes(killed_runs):
    runs = killed_runs["delays"]
    assert any(killed for _, killed in runs)
    for run, _ in runs:
        listed = _check_left_state(run)
        assert 1 <= len(listed) <= 3


@pytest.mark.parametrize("leftover", [".step_0000004.tmp-4242", ".step_0000002.trash-0badc0de"])
def test_a_start_removes_what_killed_saves_left(tmp_path, leftover):
    (tmp_path / "checkpoints" / leftover / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_0000002").mkdir()
    (tmp_path / ".metrics.jsonl.tmp-4242").write_text("half")
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step_0000002"]
    removed = remove_leftovers(tmp_path)
    assert sorted(path.name for path in removed) == sorted([leftover, ".metrics.jsonl.tmp-4242"])
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step_0000002"]
