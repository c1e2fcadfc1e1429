"""The VQGAN training loop a CLI calls: AdamW, bf16 autocast, gradient accumulation, atomic checkpoints and resume.

Run directory layout: `config.json`, `metrics.jsonl`, `checkpoints/step_XXXXXXX/` holding `model/`
(`save_pretrained`), `discriminator.safetensors`, `trainer_state.pt` (optimizers, step, RNG) and `manifest.json`
(see checkpoints.py). A step with a non-finite loss or gradient is skipped (nonfinite.py); resume takes the newest
checkpoint that loads, warning about each newer one it skips.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from tqdm.auto import tqdm

from wd_tokenizer.checkpoints import checkpoint_dirs, prune, remove_leftovers, staged_checkpoint, verify_checkpoint
from wd_tokenizer.io import atomic_write_text, read_state, read_tensors, save_module_weights
from wd_tokenizer.losses import LossConfig, VQGANLoss
from wd_tokenizer.metrics import code_histogram, codebook_perplexity, codebook_usage
from wd_tokenizer.model import VQGAN, load_state_dict_strict
from wd_tokenizer.nonfinite import SkippedSteps, TrainingDiverged, all_finite, buffer_snapshot, first_non_finite
from wd_tokenizer.runlock import hold_run_directory

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
    max_nonfinite_steps: int = 20  # skipped steps (non-finite loss or gradient) in a row that stop the run
    loss: LossConfig = field(default_factory=LossConfig)
    # Total training time over all calls of the run: training stops (with a checkpoint) once it is spent.
    time_budget_minutes: float | None = None

    def __post_init__(self) -> None:
        if not (all_finite(self.lr, self.weight_decay, *self.betas) and self.lr >= 0 and self.weight_decay >= 0
                and all(0 <= beta < 1 for beta in self.betas)):
            raise ValueError(f"lr and weight_decay must be finite numbers >= 0 and betas in [0, 1), got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, betas={self.betas}")
        counts = ("grad_accumulation", "checkpoint_every", "keep_checkpoints", "log_every", "max_nonfinite_steps")
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


def logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a line cut short or damaged, so that it is dropped."""
    try:
        step = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        return math.inf
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf


def metrics_line(values: dict[str, float]) -> str:
    """One metrics.jsonl line; a NaN or inf value (a skipped step) is written as null, keeping the line JSON."""
    return json.dumps({name: value if not isinstance(value, float) or math.isfinite(value) else None
                       for name, value in values.items()}) + "\n"


def kept_metrics(path: Path, step: int) -> None:
    """Drop the lines of a metrics.jsonl logged after `step` (a resumed run logs those steps again) and any line cut
    short or damaged (undecodable bytes included)."""
    if path.exists():
        lines = path.read_text(errors="replace").splitlines()
        atomic_write_text(path, "".join(line + "\n" for line in lines if logged_step(line) <= step))


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
        self.skipped = SkippedSteps(config.max_nonfinite_steps, "train.max_nonfinite_steps")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, batch_fn: BatchFn) -> dict[str, float]:
        """One optimizer step over `grad_accumulation` micro-batches; returns the mean of the logged terms. A
        non-finite generator (or discriminator) loss or gradient norm skips that update; logs["skipped"] is 1."""
        c, model, disc = self.config, self.model, self.loss.discriminator
        gan_on = self.step >= c.loss.disc_start
        logs: dict[str, float] = {}
        pairs = []
        total = torch.zeros((), device=self.device)
        codes = torch.zeros_like(self.codes)
        restore_buffers = buffer_snapshot(model, disc)
        disc.requires_grad_(False)  # the generator pass must not leave gradients on the discriminator
        for micro in range(c.grad_accumulation):
            pixels = batch_fn(self.step * c.grad_accumulation + micro).to(self.device)
            with self.autocast():
                output = model(pixels)
                loss, micro_logs = self.loss.generator_loss(pixels, output, model.decoder.conv_out.weight, self.step)
            (loss / c.grad_accumulation).backward()
            total += loss.detach().float() / c.grad_accumulation
            codes = codes + code_histogram(output.ids.detach().cpu(), model.codebook_size)
            for key, value in micro_logs.items():
                logs[key] = logs.get(key, 0.0) + value / c.grad_accumulation
            if gan_on:
                pairs.append((pixels, output.reconstruction.detach()))
        skipped = not self._apply(self.opt_g, float(total), model)
        if not skipped:
            self.codes += codes
        disc.requires_grad_(True)
        d_total = torch.zeros((), device=self.device)
        for pixels, reconstruction in pairs if not skipped else []:
            with self.autocast():
                d_loss = self.loss.discriminator_loss(pixels, reconstruction)
            (d_loss / c.grad_accumulation).backward()
            d_total += d_loss.detach().float() / c.grad_accumulation
        if pairs and not skipped:
            logs["disc"] = float(d_total)
            skipped = not self._apply(self.opt_d, logs["disc"], disc)
        if skipped:
            restore_buffers()
        self.step += 1
        self.skipped.record(skipped, self.step, {"loss": float(total), **({"disc": logs["disc"]} if "disc" in logs
                                                                           else {})})
        return {**logs, "skipped": float(skipped)}

    def _apply(self, optimizer: torch.optim.Optimizer, loss: float, module: torch.nn.Module) -> bool:
        """Step `optimizer` unless the loss or `module`'s gradient norm is not finite; clear the gradients either
        way. -> whether it stepped."""
        grads = [param.grad for param in module.parameters() if param.grad is not None]
        finite = all_finite(loss, float(torch.nn.utils.get_total_norm(grads))) if grads else all_finite(loss)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return finite

    def save_checkpoint(self) -> Path:
        """Write `checkpoints/step_XXXXXXX/` (see checkpoints.py), then prune old ones; TrainingDiverged instead
        when a weight is not finite (such a checkpoint is never written)."""
        for module, prefix in ((self.model, ""), (self.loss.discriminator, "discriminator.")):
            name = first_non_finite(module.state_dict().items())
            if name is not None:
                raise TrainingDiverged(f"{prefix}{name} holds NaN or inf at step {self.step}; checkpoint not "
                                       "written (lower lr and resume from the last checkpoint)")
        with staged_checkpoint(self.run_dir, self.step) as staging:
            self.model.save_pretrained(staging / "model")
            save_module_weights(self.loss.discriminator, staging / "discriminator.safetensors")
            state = {"step": self.step, "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                     "codes": self.codes, "rng": torch.get_rng_state(), "skipped_steps": self.skipped.total,
                     "trained_seconds": self.trained_seconds}
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            with open(staging / "trainer_state.pt", "wb") as handle:  # a handle: a failed write keeps its errno
                torch.save(state, handle)
        prune(self.run_dir, self.config.keep_checkpoints)
        return self.run_dir / "checkpoints" / f"step_{self.step:07d}"

    def load_checkpoint(self, directory: Path) -> None:
        """Restore everything `save_checkpoint` wrote; a damaged or mismatched checkpoint is a one-line ValueError
        naming it."""
        try:
            verify_checkpoint(directory)
            model = read_tensors(directory / "model" / "model.safetensors", self.device)
            discriminator = read_tensors(directory / "discriminator.safetensors", self.device)
            state = read_state(directory / "trainer_state.pt")
            load_state_dict_strict(self.model, model)
            load_state_dict_strict(self.loss.discriminator, discriminator)
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.step, self.codes = int(state["step"]), state["codes"]
            self.skipped.total = int(state.get("skipped_steps", 0))
            self.trained_seconds = float(state.get("trained_seconds", 0.0))
            torch.set_rng_state(state["rng"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise ValueError(f"cannot resume from {directory}: {' '.join(str(error).split())}") from None
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        kept_metrics(self.run_dir / "metrics.jsonl", self.step)

    def resume(self) -> None:
        """Load the newest checkpoint that loads, with a warning for each newer one skipped; ValueError when there
        are checkpoints but none loads."""
        reasons = []
        for directory in reversed(checkpoint_dirs(self.run_dir)):
            try:
                self.load_checkpoint(directory)
            except ValueError as error:
                warnings.warn(f"skipping checkpoint {directory}: {error}", stacklevel=2)
                reasons.append(directory.name)
                continue
            return
        if reasons:
            raise ValueError(f"no checkpoint of {self.run_dir} loads ({', '.join(reasons)}: see the warnings); "
                             "move them away to start over")

    def log(self, logs: dict[str, float]) -> dict[str, float]:
        """Append one metrics.jsonl line with the loss terms and codebook use since the previous line."""
        record = {"step": self.step, **logs, "codebook_usage": codebook_usage(self.codes),
                  "perplexity": codebook_perplexity(self.codes)}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(metrics_line(record))
        self.codes.zero_()
        return record

    def fit(self, batch_fn: BatchFn, progress: bool = True) -> VQGAN:
        """Train to `config.steps` holding the run directory's lock (runlock.py), resuming first."""
        with hold_run_directory(self.run_dir):
            remove_leftovers(self.run_dir)
            self.resume()
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
                    record = self.log({**logs, "skipped_steps": self.skipped.total})
                    bar.set_postfix(l1=f"{record['l1']:.4f}", usage=f"{record['codebook_usage']:.2f}",
                                    skipped=self.skipped.total)
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
