"""Distributed setup and parallelism applied from outside the plain STPT (as torchtitan's parallelize.py):
torch.compile per block, then DDP or FSDP2 `fully_shard` per block and at the root. Activation checkpointing
is STPTConfig's switch, which the trainer sets from `parallel.activation_checkpointing` before building."""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from wd_cli.devices import prefers_bf16
from wd_cli.train.config import ParallelSection, TrainSection

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process stands: rank among world_size (1 without torchrun) and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(section: TrainSection) -> DistributedEnv:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and start the process group (nccl on CUDA, gloo on CPU). A group
    started here is closed at interpreter exit (`close_distributed`, as an atexit handler) unless the caller
    closes it first, so a script that calls `train_stpt` under torchrun and then uses the group (or just ends)
    needs no shutdown code of its own."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if section.device is not None:
        device = torch.device(section.device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(close_distributed)
    return DistributedEnv(rank, world_size, device)


def close_distributed() -> None:
    """Destroy the process group (destroy_process_group shuts its backends down) while the interpreter is fully
    alive. A group left to interpreter shutdown is freed with the last DDP wrapper (its reducer) or FSDP
    parameter holding it, and gloo's worker threads torn down then, without the GIL, abort the rank ("terminate
    called without an active exception", SIGABRT after a finished run, now and then in CI). atexit handlers run
    before that teardown, which is why init_distributed registers this function as one; calling it again is a
    no-op. Collecting first frees wrappers nobody holds any more."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def parallelize(model: nn.Module, section: ParallelSection, env: DistributedEnv) -> nn.Module:
    """Compile each block (if asked), then wrap when world_size > 1: FSDP2 per block + root (strategy "fsdp") or
    DDP; a single process trains the plain model."""
    if section.compile:
        for block in model.blocks:
            block.compile()
    if env.world_size == 1:
        return model
    if section.strategy == "fsdp":
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[section.fsdp_param_dtype],
                                      reduce_dtype=DTYPES[section.fsdp_reduce_dtype])
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    # A batch without actions (or text) leaves the prompt MLPs unused, so DDP must look for unused parameters.
    return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                   find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain STPT under a DDP wrapper (FSDP2 keeps the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def any_rank(flag: bool, env: DistributedEnv) -> bool:
    """True on every rank when `flag` is True on any rank (stop requests must be agreed on)."""
    if env.world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def autocast(section: TrainSection, env: DistributedEnv) -> torch.autocast:
    """bf16 autocast with mixed_precision bf16, or auto where bf16 is the faster choice (`prefers_bf16`: CUDA, or a
    CPU with bf16 units); float32 otherwise."""
    enabled = section.mixed_precision == "bf16" or (section.mixed_precision == "auto" and prefers_bf16(env.device))
    return torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=enabled)
