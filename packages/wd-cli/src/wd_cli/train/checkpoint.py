"""Training checkpoints: `run_dir/checkpoints/step_XXXXXXX/` holding `model/` (STPT.save_pretrained), `ema/`
(with EMA), `trainer_state.pt` (optimizer, scheduler, step, data position, per-rank RNG states, skipped steps) and
`manifest.json` (the SHA-256 of each file).

wd_tokenizer.checkpoints writes them under a temporary name, renamed when complete, and prunes by renaming first,
so a kill or a failed write at any moment leaves only complete checkpoints. Model and optimizer go through
torch.distributed.checkpoint's full state dicts (keyed by parameter name), so single-process, DDP and FSDP2 runs
write the same files. A checkpoint is read whole and checked (manifest, keys, finite weights) before anything is
restored, so resume can pass over a damaged one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.swa_utils import AveragedModel
from wd_stpt import STPT, STPTConfig
from wd_stpt.positions import fit_time_table
from wd_tokenizer.checkpoints import CheckpointWriteError, prune, staged_checkpoint, verify_checkpoint
from wd_tokenizer.io import first_line, read_state, read_tensors
from wd_tokenizer.nonfinite import TrainingDiverged, first_non_finite

from wd_cli.train.configfile import ConfigError
from wd_cli.train.parallel import DistributedEnv, any_rank

TRAINER_STATE = "trainer_state.pt"
STATE_KEYS = ("step", "optimizer", "scheduler", "data", "rng")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
Loaded = TypeVar("Loaded")


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _gather(value: Any, env: DistributedEnv) -> list[Any]:
    if env.world_size == 1:
        return [value]
    values: list[Any] = [None] * env.world_size
    dist.all_gather_object(values, value)
    return values


def save_stpt(state: dict[str, torch.Tensor], config: STPTConfig, directory: Path) -> None:
    """Write a full STPT state dict as `STPT.save_pretrained` does (config.json + model.safetensors)."""
    with torch.device("meta"):
        shell = STPT(config)
    shell.load_state_dict(state, assign=True)
    shell.save_pretrained(directory)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, config: STPTConfig, optimizer: torch.optim.Optimizer,
                    scheduler: Any, ema: AveragedModel | None, data_state: dict, keep: int, env: DistributedEnv,
                    skipped_steps: int = 0, trained_seconds: float = 0.0) -> Path:
    """Write checkpoint `step` (every rank calls this: the state dicts are gathered); rank 0 writes the files.
    On every rank: TrainingDiverged when a weight is not finite (nothing is written), CheckpointWriteError when
    a write fails (nothing of it is left). `trained_seconds`: the run's training time so far (its time budget
    continues from it on resume)."""
    model_state = get_model_state_dict(model, options=FULL)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    rng = _gather(_rng_state(env.device), env)
    final = run_dir / "checkpoints" / f"step_{step:07d}"
    error: Exception | None = None
    if env.is_main:
        try:
            _check_finite(model_state, ema, step)
            with staged_checkpoint(run_dir, step) as staging:
                save_stpt(model_state, config, staging / "model")
                state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                         "data": data_state, "rng": rng, "skipped_steps": skipped_steps,
                         "trained_seconds": trained_seconds}
                if ema is not None:
                    ema.module.save_pretrained(staging / "ema")
                    state["ema_n_averaged"] = ema.n_averaged.cpu()
                with open(staging / TRAINER_STATE, "wb") as handle:  # a handle: a failed write keeps its errno
                    torch.save(state, handle)
            prune(run_dir, keep)
        except (CheckpointWriteError, TrainingDiverged) as caught:
            error = caught
    if any_rank(error is not None, env):  # every rank stops together (a lone raise would hang the others)
        raise error or CheckpointWriteError(f"rank 0 could not write checkpoint {final}")
    return final


def _check_finite(model_state: dict[str, torch.Tensor], ema: AveragedModel | None, step: int) -> None:
    for prefix, state in (("", model_state), ("ema.", ema.module.state_dict() if ema is not None else {})):
        name = first_non_finite(state.items())
        if name is not None:
            raise TrainingDiverged(f"{prefix}{name} holds NaN or inf at step {step}; checkpoint not written (lower "
                                   "optim.lr, or check the data, and resume from the last checkpoint)")


def read_checkpoint(directory: Path, with_ema: bool) -> dict[str, Any]:
    """Read and check a checkpoint without restoring anything: its manifest, the trainer state's keys and finite
    weights; -> {"model", "state"[, "ema"]}. A damaged one is a one-line ConfigError saying what is wrong."""
    try:
        verify_checkpoint(directory)
        files = {"model": read_tensors(directory / "model" / "model.safetensors"),
                 "state": read_state(directory / TRAINER_STATE)}
        if with_ema:
            files["ema"] = read_tensors(directory / "ema" / "model.safetensors")
        missing = set(STATE_KEYS + (("ema_n_averaged",) if with_ema else ())) - set(files["state"])
        if missing:
            raise ValueError(f"{directory / TRAINER_STATE} lacks {', '.join(sorted(missing))}")
        for name in ("model", "ema") if with_ema else ("model",):
            bad = first_non_finite(files[name].items())
            if bad is not None:
                raise ValueError(f"{directory / name / 'model.safetensors'}: {bad} holds NaN or inf")
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot resume from {directory}: {' '.join(first_line(error).split())}") from None
    return files


def apply_checkpoint(files: dict[str, Any], directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, ema: AveragedModel | None, env: DistributedEnv) -> dict[str, Any]:
    """Restore what `read_checkpoint` read into the (wrapped) model and the rest; -> the trainer state dict (step,
    data). A checkpoint that does not fit (another model config) is a one-line ConfigError."""
    state = files["state"]
    try:
        set_model_state_dict(model, files["model"], options=StateDictOptions(full_state_dict=True))
        # Not strict: a parameter that never had a gradient (e.g. the action MLP on action-free data) has no state.
        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict({name: tensor.to(env.device) for name, tensor in files["ema"].items()})
            ema.n_averaged.copy_(state["ema_n_averaged"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ConfigError(f"cannot resume from {directory}: {' '.join(first_line(error).split())}") from None
    if len(state["rng"]) == env.world_size:  # same world size: each rank continues its own random stream
        rng = state["rng"][env.rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and env.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], env.device)
    return state


def newest_whole(checkpoints: Sequence[Path], load: Callable[[Path], Loaded], what: str, run: str) -> Loaded:
    """`load` of the newest of `checkpoints` that loads. Each newer one that does not (OSError, ValueError: damaged)
    is skipped with a one-line warning naming `what`; ConfigError naming `run` when none loads."""
    for checkpoint in reversed(checkpoints):
        try:
            return load(checkpoint)
        except (OSError, ValueError) as error:
            warnings.warn(f"skipping {what} {checkpoint.name}: {' '.join(str(error).split())}", stacklevel=3)
    raise ConfigError(f"no checkpoint of {run} is whole (see the warnings)")


def stpt_weights_dir(path: str | Path) -> Path:
    """The STPT directory inside a checkpoint (`model/`), a pipeline (`stpt/`), or `path` itself."""
    path = Path(path)
    for inner in (path / "model", path / "stpt"):
        if (inner / "model.safetensors").is_file():
            return inner
    return path


def init_weights_from(model: STPT, path: str | Path) -> None:
    """Load only the weights of a checkpoint / STPT / pipeline directory into `model`; a mismatch is a one-line
    ConfigError. Fine-tuning at another resolution or frame count works: rows and columns interpolate, and a
    time table of another length is cut or grown to the model's `position_frames` (`fit_time_table`)."""
    directory = stpt_weights_dir(path)
    try:
        state = read_tensors(directory / "model.safetensors", next(model.parameters()).device)
        bad = first_non_finite(state.items())
        if bad is not None:
            raise ValueError(f"{bad} holds NaN or inf")
        model.load_state_dict(fit_time_table(state, model.config.position_frames))
    except (OSError, ValueError, RuntimeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(f"model.init_from: cannot load {directory}: {' '.join(lines[:2])}") from None
