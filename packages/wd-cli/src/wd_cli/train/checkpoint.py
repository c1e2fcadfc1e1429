"""Training checkpoints: `run_dir/checkpoints/step_XXXXXXX/` holding `model/` (STPT.save_pretrained), `ema/`
(with EMA) and `trainer_state.pt` (optimizer, scheduler, step, data position, per-rank RNG states).

A checkpoint is written under a temporary name (`.step_XXXXXXX.tmp-PID`) and renamed when complete, so a
half-written one is never listed. Model and optimizer go through torch.distributed.checkpoint's full state
dicts (keyed by parameter name), so single-process, DDP and FSDP2 runs write the same files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

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
from wd_tokenizer.io import read_tensors
from wd_tokenizer.training import checkpoint_dirs

from wd_cli.train.configfile import ConfigError
from wd_cli.train.parallel import DistributedEnv

TRAINER_STATE = "trainer_state.pt"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of `run_dir`, or None."""
    found = checkpoint_dirs(Path(run_dir))
    return found[-1] if found else None


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
                    scheduler: Any, ema: AveragedModel | None, data_state: dict, keep: int,
                    env: DistributedEnv, trained_seconds: float = 0.0) -> Path:
    """Write checkpoint `step` (every rank calls this: the state dicts are gathered); rank 0 writes the files.
    `trained_seconds`: the run's training time so far (its time budget continues from it on resume)."""
    model_state = get_model_state_dict(model, options=FULL)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    rng = _gather(_rng_state(env.device), env)
    final = run_dir / "checkpoints" / f"step_{step:07d}"
    if env.is_main:
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_stpt(model_state, config, tmp / "model")
        state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                 "data": data_state, "rng": rng, "trained_seconds": trained_seconds}
        if ema is not None:
            ema.module.save_pretrained(tmp / "ema")
            state["ema_n_averaged"] = ema.n_averaged.cpu()
        torch.save(state, tmp / TRAINER_STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old)
    if env.world_size > 1:
        dist.barrier()
    return final


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema: AveragedModel | None, env: DistributedEnv) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote into the (wrapped) model and the rest; -> the trainer state
    dict (step, data). A bad checkpoint is a one-line ConfigError."""
    try:
        model_state = read_tensors(directory / "model" / "model.safetensors")
        state = torch.load(directory / TRAINER_STATE, map_location="cpu", weights_only=True)
        set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
        # Not strict: a parameter that never had a gradient (e.g. the action MLP on action-free data) has no state.
        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(read_tensors(directory / "ema" / "model.safetensors", env.device))
            ema.n_averaged.copy_(state["ema_n_averaged"])
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot resume from {directory}: {reason}") from None
    if len(state["rng"]) == env.world_size:  # same world size: each rank continues its own random stream
        rng = state["rng"][env.rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and env.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], env.device)
    return state


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
        model.load_state_dict(fit_time_table(state, model.config.position_frames))
    except (OSError, ValueError, RuntimeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(f"model.init_from: cannot load {directory}: {' '.join(lines[:2])}") from None
