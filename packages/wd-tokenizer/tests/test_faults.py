"""Training faults in the VQGAN loop: non-finite steps skipped and counted, too many in a row stop in one line,
non-finite weights never saved, a damaged newest checkpoint passed over with a warning, write failures in one
line, leftovers of killed saves removed, one trainer per run directory."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat

import pytest
import torch

from wd_tokenizer import VQGAN, LossConfig, TrainConfig, frame_batches, train_vqgan
from wd_tokenizer.checkpoints import CheckpointWriteError, checkpoint_dirs
from wd_tokenizer.io import atomic_write_text
from wd_tokenizer.nonfinite import TrainingDiverged
from wd_tokenizer.runlock import RunDirectoryBusy, hold_run_directory
from wd_tokenizer.training import Trainer


def config(steps: int, **fields) -> TrainConfig:
    return TrainConfig(steps=steps, lr=1e-3, checkpoint_every=1, keep_checkpoints=3, log_every=1,
                       loss=LossConfig(disc_start=1, disc_channels=8, disc_layers=2, perceptual_weight=0.0), **fields)


def model(tiny_config) -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(dataclasses.replace(tiny_config, quantizer="fsq", fsq_levels=[4, 4]))


def nan_at(batches, indices: set[int] | None):
    """Batches whose pixels are NaN at the given indices (None: at every index)."""
    return lambda index: batches(index) * (math.nan if indices is None or index in indices else 1.0)


def test_a_non_finite_step_is_skipped_and_counted(tiny_config, synthetic_clip, tmp_path):
    batches = frame_batches(synthetic_clip, batch_size=2)
    trainer = Trainer(model(tiny_config), config(3), tmp_path)
    trainer.train_step(batches)
    weights = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    logs = trainer.train_step(nan_at(batches, None))
    assert logs["skipped"] == 1.0 and trainer.skipped.total == 1 and trainer.step == 2
    assert all(torch.equal(tensor, weights[name]) for name, tensor in trainer.model.state_dict().items())
    assert all(param.grad is None for param in trainer.model.parameters())
    trainer.fit(batches, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["skipped_steps"] for record in records] == [1]  # the third step, logged after two by hand
    assert torch.load(checkpoint_dirs(tmp_path)[-1] / "trainer_state.pt", weights_only=True)["skipped_steps"] == 1


def test_too_many_skips_in_a_row_stop_and_weights_stay_finite(tiny_config, synthetic_clip, tmp_path):
    batches = nan_at(frame_batches(synthetic_clip, batch_size=2), None)
    with pytest.raises(TrainingDiverged, match=r"^training diverged: 2 steps in a row .*train\.max_nonfinite_steps"):
        train_vqgan(model(tiny_config), batches, config(5, max_nonfinite_steps=2), tmp_path, progress=False)
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step_0000001"]  # the untouched weights
    trainer = Trainer(model(tiny_config), config(5), tmp_path)
    with torch.no_grad():
        trainer.model.encoder.conv_in.weight[0, 0, 0, 0] = math.inf
    trainer.step = 7
    with pytest.raises(TrainingDiverged, match="encoder.conv_in.weight holds NaN or inf at step 7; checkpoint not"):
        trainer.save_checkpoint()
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step_0000001"]


@pytest.mark.parametrize(("field", "value"), [("lr", math.inf), ("lr", math.nan), ("betas", (0.5, math.nan)),
                                               ("weight_decay", -math.inf), ("betas", (0.5, 1.0))])
def test_non_finite_settings_are_refused(field, value):
    with pytest.raises(ValueError, match="lr and weight_decay must be finite numbers"):
        TrainConfig(**{field: value})


def test_resume_passes_over_a_damaged_newest_checkpoint(tiny_config, synthetic_clip, tmp_path):
    batches = frame_batches(synthetic_clip, batch_size=2)
    straight = train_vqgan(model(tiny_config), batches, config(3), tmp_path / "straight", progress=False)
    train_vqgan(model(tiny_config), batches, config(2), tmp_path / "run", progress=False)
    (checkpoint_dirs(tmp_path / "run")[-1] / "trainer_state.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step_0000002: cannot resume from .* is damaged"):
        resumed = train_vqgan(model(tiny_config), batches, config(3), tmp_path / "run", progress=False)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    for checkpoint in checkpoint_dirs(tmp_path / "run"):
        (checkpoint / "manifest.json").write_text("{")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no checkpoint of .* loads"):
        train_vqgan(model(tiny_config), batches, config(4), tmp_path / "run", progress=False)


def test_a_failed_checkpoint_write_is_one_line_and_leaves_nothing(tiny_config, synthetic_clip, tmp_path,
                                                                  monkeypatch):
    batches = frame_batches(synthetic_clip, batch_size=2)
    train_vqgan(model(tiny_config), batches, config(1), tmp_path, progress=False)

    def full_disk(state, handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as raised:
        train_vqgan(model(tiny_config), batches, config(2), tmp_path, progress=False)
    assert str(raised.value) == (f"cannot write checkpoint {tmp_path / 'checkpoints' / 'step_0000002'}: No space "
                                 "left on device; the previous checkpoints are kept")
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]


def test_leftovers_of_killed_saves_go_at_the_next_start(tiny_config, synthetic_clip, tmp_path):
    (tmp_path / "checkpoints" / ".step_0000002.tmp-99999" / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".step_0000001.trash-1234abcd").mkdir()
    (tmp_path / ".config.json.tmp-99999").write_text("{")
    train_vqgan(model(tiny_config), frame_batches(synthetic_clip, batch_size=2), config(1), tmp_path, progress=False)
    assert sorted(path.name for path in tmp_path.rglob(".*")) == []


def test_one_trainer_per_run_directory(tiny_config, synthetic_clip, tmp_path):
    with hold_run_directory(tmp_path):
        with hold_run_directory(tmp_path):  # the same process may nest holds
            pass
        holder = json.loads((tmp_path / "train.lock").read_text())
        assert holder["pid"] == os.getpid()
        # Another open file description, as another process would have: flock refuses it.
        with pytest.raises(RunDirectoryBusy, match=rf"is in use by another trainer \(pid {os.getpid()} on host"):
            descriptor = os.open(tmp_path / "train.lock", os.O_RDWR)
            try:
                import fcntl

                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from wd_tokenizer.runlock import describe_holder

                raise RunDirectoryBusy(f"{tmp_path} is in use by another trainer "
                                       f"({describe_holder((tmp_path / 'train.lock').read_text())})") from None
            finally:
                os.close(descriptor)
    assert (tmp_path / "train.lock").read_text() == ""


def test_atomic_writes_keep_plain_write_modes(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
        os.chmod(tmp_path / "new.json", 0o604)
        atomic_write_text(tmp_path / "new.json", "[]")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o604
    finally:
        os.umask(previous)
