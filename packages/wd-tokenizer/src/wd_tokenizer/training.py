"""The VQGAN training loop a CLI calls: AdamW, bf16 autocast, gradient accumulation, atomic checkpoints and resume.

Run directory layout: `config.json`, `metrics.jsonl`, `checkpoints/step_XXXXXXX/` holding `model/`
(`save_pretrained`), `discriminator.safetensors` and `trainer_state.pt` (optimizers, step, RNG).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from tqdm.auto import tqdm

from wd_tokenizer.io import atomic_write_text, read_tensors, save_module_weights
from wd_tokenizer.losses import LossConfig, VQGANLoss
from wd_tokenizer.metrics import code_histogram, codebook_perplexity, codebook_usage
from wd_tokenizer.model import VQGAN, load_state_dict_strict

BatchFn = Callable[[int], torch.Tensor]


@dataclass
class TrainConfig:
    steps: int = 100_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.01
    grad_accumulation: int = 1
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"  # auto: bf16 on a CUDA device that supports it
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    log_every: int = 100
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    # Total training time over all calls of the run: training stops (with a checkpoint) once it is spent.
    time_budget_minutes: float | None = None

    def __post_init__(self) -> None:
        counts = ("grad_accumulation", "checkpoint_every", "keep_checkpoints", "log_every")
        bad = {name: getattr(self, name) for name in counts if getattr(self, name) < 1}
        if self.steps < 0:
            bad["steps"] = self.steps
        if self.time_budget_minutes is not None and not 0 < self.time_budget_minutes < math.inf:
            bad["time_budget_minutes"] = self.time_budget_minutes
        if bad:
            raise ValueError(f"TrainConfig fields out of range (steps must be >= 0, the others >= 1): {bad}")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'no', got {self.mixed_precision!r}")


def frame_batches(frames: torch.Tensor, batch_size: int, seed: int = 0) -> BatchFn:
    """Uint8 frames (M, H, W, 3), torch or numpy -> `batch(i)`: float (batch_size, 3, H, W) in [0, 1],
    drawn from (seed, i) alone."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (M, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")

    def batch(index: int) -> torch.Tensor:
        # Seeding by index makes the data order independent of where a run was resumed.
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        picked = frames[torch.randint(len(frames), (batch_size,), generator=generator)]
        return rearrange(picked, "b h w c -> b c h w").float() / 255.0

    return batch


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones keep their temporary name and are never listed)."""
    # By number: past 9,999,999 steps the zero-padded names no longer sort as text.
    return sorted((run_dir / "checkpoints").glob("step_[0-9]*"), key=lambda path: int(path.name[len("step_"):]))


def logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a line cut short, so that it is dropped."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def use_bf16(mode: str, device: torch.device) -> bool:
    if mode == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return mode == "bf16"


class Trainer:
    """Owns the model, the loss (with its discriminator) and both optimizers for one run directory."""

    def __init__(self, model: VQGAN, config: TrainConfig, run_dir: str | Path) -> None:
        self.model, self.config, self.run_dir = model, config, Path(run_dir)
        self.device = next(model.parameters()).device
        # Seeds the discriminator's init and the codebook's k-means / dead-code sampling; resume restores the RNG.
        torch.manual_seed(config.seed)
        self.loss = VQGANLoss(config.loss).to(self.device)
        adamw = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        self.opt_g = torch.optim.AdamW(model.parameters(), **adamw)
        self.opt_d = torch.optim.AdamW(self.loss.discriminator.parameters(), **adamw)
        self.bf16 = use_bf16(config.mixed_precision, self.device)
        self.step = 0
        self.trained_seconds = 0.0  # over all calls of this run
        self.codes = torch.zeros(model.codebook_size, dtype=torch.long)  # code histogram since the last log line

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, batch_fn: BatchFn) -> dict[str, float]:
        """One optimizer step over `grad_accumulation` micro-batches; returns the mean of the logged terms."""
        c, model, disc = self.config, self.model, self.loss.discriminator
        gan_on = self.step >= c.loss.disc_start
        logs: dict[str, float] = {}
        pairs = []
        disc.requires_grad_(False)  # the generator pass must not leave gradients on the discriminator
        for micro in range(c.grad_accumulation):
            pixels = batch_fn(self.step * c.grad_accumulation + micro).to(self.device)
            with self.autocast():
                output = model(pixels)
                loss, micro_logs = self.loss.generator_loss(pixels, output, model.decoder.conv_out.weight, self.step)
            (loss / c.grad_accumulation).backward()
            self.codes += code_histogram(output.ids.detach().cpu(), model.codebook_size)
            for key, value in micro_logs.items():
                logs[key] = logs.get(key, 0.0) + value / c.grad_accumulation
            if gan_on:
                pairs.append((pixels, output.reconstruction.detach()))
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        disc.requires_grad_(True)
        for pixels, reconstruction in pairs:
            with self.autocast():
                d_loss = self.loss.discriminator_loss(pixels, reconstruction)
            (d_loss / c.grad_accumulation).backward()
            logs["disc"] = logs.get("disc", 0.0) + d_loss.item() / c.grad_accumulation
        if pairs:
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        self.step += 1
        return logs

    def save_checkpoint(self) -> Path:
        """Write `checkpoints/step_XXXXXXX/` under a temporary name, rename it when complete, prune old ones."""
        final = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp / "model")
        save_module_weights(self.loss.discriminator, tmp / "discriminator.safetensors")
        state = {"step": self.step, "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                 "codes": self.codes, "rng": torch.get_rng_state(), "trained_seconds": self.trained_seconds}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(self.run_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)
        return final

    def load_checkpoint(self, directory: Path) -> None:
        load_state_dict_strict(self.model, read_tensors(directory / "model" / "model.safetensors", self.device))
        load_state_dict_strict(self.loss.discriminator,
                               read_tensors(directory / "discriminator.safetensors", self.device))
        state = torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step, self.codes = state["step"], state["codes"]
        self.trained_seconds = float(state.get("trained_seconds", 0.0))
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.forget_metrics_after(self.step)

    def forget_metrics_after(self, step: int) -> None:
        """Drop metrics.jsonl lines logged after `step` (a resumed run logs those steps again) and a last line
        cut short by a crash."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if logged_step(line) <= step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def log(self, logs: dict[str, float]) -> dict[str, float]:
        """Append one metrics.jsonl line with the loss terms and codebook use since the previous line."""
        record = {"step": self.step, **logs, "codebook_usage": codebook_usage(self.codes),
                  "perplexity": codebook_perplexity(self.codes)}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self.codes.zero_()
        return record

    def fit(self, batch_fn: BatchFn, progress: bool = True) -> VQGAN:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = checkpoint_dirs(self.run_dir)
        if checkpoints:
            self.load_checkpoint(checkpoints[-1])
        config = {"model": dataclasses.asdict(self.model.config), "train": dataclasses.asdict(self.config)}
        atomic_write_text(self.run_dir / "config.json", json.dumps(config, indent=2))
        self.model.train()
        self.loss.train()
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not progress, desc="vqgan")
        budget = math.inf if self.config.time_budget_minutes is None else 60 * self.config.time_budget_minutes
        while self.step < self.config.steps and self.trained_seconds < budget:
            start = time.monotonic()
            logs = self.train_step(batch_fn)
            self.trained_seconds += time.monotonic() - start
            bar.update(1)
            last = self.step == self.config.steps or self.trained_seconds >= budget
            if self.step % self.config.log_every == 0 or last:
                record = self.log(logs)
                bar.set_postfix(l1=f"{record['l1']:.4f}", usage=f"{record['codebook_usage']:.2f}")
            if self.step % self.config.checkpoint_every == 0 or last:
                self.save_checkpoint()
        if self.step < self.config.steps and progress:
            tqdm.write(f"vqgan: time budget of {self.config.time_budget_minutes:g} min spent, stopping at step "
                       f"{self.step} of {self.config.steps}")
        bar.close()
        return self.model.eval()


def train_vqgan(
    model: VQGAN, batch_fn: BatchFn, config: TrainConfig, run_dir: str | Path, progress: bool = True
) -> VQGAN:
    """Train `model` on `batch_fn(i)` -> float (B, 3, H, W) in [0, 1] until `config.steps`, resuming from
    the newest checkpoint in `run_dir` when there is one; returns the model in eval mode."""
    return Trainer(model, config, run_dir).fit(batch_fn, progress)
