"""The STPT training loop: `train_stpt(config, run_dir)` trains or resumes and returns the model in eval mode.

One trainer per run directory (rank 0 holds `train.lock`); a step with a non-finite loss or gradient norm is
skipped on every rank, and `train.max_nonfinite_steps` skips in a row stop the run with one line.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from wd_stpt import STPT, STPTConfig, get_config
from wd_tokenizer import VQGAN
from wd_tokenizer.checkpoints import checkpoint_dirs, remove_leftovers
from wd_tokenizer.io import atomic_write_text
from wd_tokenizer.nonfinite import SkippedSteps, all_finite
from wd_tokenizer.runlock import RunDirectoryBusy, hold_run_directory

from wd_cli.text_encoders import CachedTextEncoder, TextEncoder, load_text_encoder
from wd_cli.train.checkpoint import apply_checkpoint, init_weights_from, read_checkpoint, save_checkpoint
from wd_cli.train.config import OptimSection, STPTRunConfig
from wd_cli.train.configfile import ConfigError, dump_yaml
from wd_cli.train.data import MASK_STREAM, BatchPreparer, DataStream, Source, cache_property, generator, open_sources
from wd_cli.train.metrics import MetricsLog
from wd_cli.train.objective import MaskedTokenObjective
from wd_cli.train.parallel import DistributedEnv, any_rank, autocast, init_distributed, parallelize, unwrap
from wd_cli.train.samples import sample_tokens, write_sample_videos
from wd_cli.train.tokenizer import vqgan_dir

CONFIG_FILE = "config.yaml"


def _one_value(values: dict[str, int | None], field: str) -> int | None:
    """The single value the named places agree on (None if none gives one); a ConfigError when they differ."""
    given = {name: value for name, value in values.items() if value is not None}
    if len(set(given.values())) > 1:
        found = ", ".join(f"{name} {value}" for name, value in given.items())
        raise ConfigError(f"{field} disagrees: {found}")
    return next(iter(given.values()), None)


def model_config(config: STPTRunConfig, sources: list[Source], tokenizer: VQGAN | None,
                 text_encoder: TextEncoder | None) -> STPTConfig:
    """The preset with overrides; codebook_size from the tokenizer / token caches and text_dim from the text
    encoder / caches, each checked against the others and against an explicit override."""
    overrides = dict(config.model.overrides)
    codebook = _one_value({"model.tokenizer": tokenizer.codebook_size if tokenizer else None,
                           "token cache metadata": cache_property(sources, "codebook_size"),
                           "model.overrides": overrides.get("codebook_size")}, "codebook_size")
    if codebook is None:
        raise ConfigError("codebook_size: unknown; give model.tokenizer or token caches whose metadata has it")
    text_dim = _one_value({"model.text_encoder": text_encoder.dim if text_encoder else None,
                           "token cache text": cache_property(sources, "text_dim"),
                           "model.overrides": overrides.get("text_dim")}, "text_dim")
    overrides["codebook_size"] = codebook
    if text_dim is not None:
        overrides["text_dim"] = text_dim
    overrides["activation_checkpointing"] = config.parallel.activation_checkpointing
    try:
        return get_config(config.model.preset, **overrides)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model: {error}") from None


def check_sources(sources: list[Source], config: STPTConfig, downsample_factor: int | None) -> None:
    """ConfigError when a source's first sample cannot run through the STPT: a token grid that the patch stride does
    not divide, or actions of another width than `action_dim`."""
    for index, source in enumerate(sources):
        sample = source.head(1)[0]
        if "tokens" in sample:
            height, width = sample["tokens"].shape[1:]
        else:
            height, width = (size // downsample_factor for size in sample["frames"].shape[1:3])
        if height % config.patch_stride or width % config.patch_stride:
            raise ConfigError(f"data.sources.{index}: its {height}x{width} token grid is not divisible by the STPT's "
                              f"patch_stride {config.patch_stride}")
        actions = sample.get("actions")
        if actions is not None and actions.shape[-1] != config.action_dim:
            raise ConfigError(f"data.sources.{index}: {actions.shape[-1]} action values per frame, the STPT's "
                              f"action_dim is {config.action_dim} (set model.overrides.action_dim)")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the weights of linear and conv layers only; norms, biases, embeddings, position tables
    and the null prompt keep none (decaying them only pulls scales and lookups toward zero)."""
    decayed = {id(module.weight) for module in model.modules()
               if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)}
    params = [param for param in model.parameters() if param.requires_grad]
    return [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]


def lr_factor(section: OptimSection, total_steps: int, step: int, time_spent: float = 0.0) -> float:
    """Linear warmup over `warmup_steps`, then cosine from 1 to `min_lr_ratio` at `total_steps` or when
    `time_spent` (the fraction of a time budget used) reaches 1, whichever comes first (or constant)."""
    if step < section.warmup_steps:
        return (step + 1) / section.warmup_steps
    if section.schedule == "constant":
        return 1.0
    progress = min(1.0, max(time_spent, (step - section.warmup_steps) / max(1, total_steps - section.warmup_steps)))
    return section.min_lr_ratio + (1 - section.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@contextmanager
def stop_on_signals() -> Iterator[list[bool]]:
    """Within the block SIGTERM/SIGINT only set the yielded flag (the loop saves and exits cleanly); outside the
    main thread, where Python cannot install handlers, signals keep their handlers."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame) -> None:
        flag[0] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class STPTTrainer:
    """Builds everything one run needs from an `STPTRunConfig`; `fit` runs the steps."""

    def __init__(self, config: STPTRunConfig, run_dir: str | Path, env: DistributedEnv) -> None:
        self.config, self.run_dir, self.env = config, Path(run_dir), env
        c = config
        self.sources = open_sources(c.data)
        self.tokenizer = open_tokenizer(c.model.tokenizer, env.device)
        self.text_encoder = open_text_encoder(c.model.text_encoder)
        for index, source in enumerate(self.sources):
            if not source.tokenized and self.tokenizer is None:
                raise ConfigError(f"data.sources.{index}: a {c.data.sources[index].kind} source needs model.tokenizer")
        self.model_config = model_config(c, self.sources, self.tokenizer, self.text_encoder)
        check_sources(self.sources, self.model_config, self.tokenizer.downsample_factor if self.tokenizer else None)
        self.stream = DataStream(self.sources, c.data.batch_size, c.train.seed, env.rank, env.world_size,
                                 c.data.num_workers)
        self.objective = MaskedTokenObjective(c.loss, self.model_config.codebook_size)
        self.resume_candidates = self._resume_candidates()

        torch.manual_seed(c.train.seed)  # the same initial weights on every rank
        model = STPT(self.model_config).to(env.device)
        if c.model.init_from is not None and not self.resume_candidates:
            init_weights_from(model, c.model.init_from)
        self.ema = None
        if c.optim.ema_decay is not None:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(c.optim.ema_decay), use_buffers=True)
        torch.manual_seed(c.train.seed + env.rank)  # seeds offset by rank from here on
        self.model = parallelize(model, c.parallel, env)
        self.optimizer = torch.optim.AdamW(param_groups(unwrap(self.model), c.optim.weight_decay), lr=c.optim.lr,
                                           betas=c.optim.betas)
        self.trained_seconds = 0.0  # training time over all calls of this run (restored on resume)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(c.optim, c.train.steps, step, self.time_spent()))
        self.prepare = BatchPreparer(env.device, self.tokenizer, self.text_encoder)
        self.step = 0
        self.skipped = SkippedSteps(c.train.max_nonfinite_steps, "train.max_nonfinite_steps")

    def time_spent(self) -> float:
        """The fraction of `train.time_budget_minutes` used so far (0 without a budget)."""
        budget = self.config.train.time_budget_minutes
        return 0.0 if budget is None else self.trained_seconds / (60 * budget)

    def _resume_candidates(self) -> list[Path]:
        """The checkpoints to try, in order: the named one, or with "auto" every one, newest first."""
        resume = self.config.checkpoint.resume
        if resume == "auto":
            return checkpoint_dirs(self.run_dir)[::-1]
        if resume == "none":
            return []
        if not Path(resume).is_dir():
            raise ConfigError(f"checkpoint.resume: {resume} is not a checkpoint directory (or 'auto', 'none')")
        return [Path(resume)]

    def resume(self) -> None:
        """Restore the first candidate that reads whole; with "auto" each newer damaged one is skipped with a
        warning naming it and why. ConfigError when none loads (nothing is overwritten)."""
        for directory in self.resume_candidates:
            error = None
            try:
                files = read_checkpoint(directory, self.ema is not None)
            except ConfigError as caught:
                error = caught
            if any_rank(error is not None, self.env):  # every rank reads the files; all must take the same one
                failure = error or ConfigError(f"cannot resume from {directory}: it does not read on another rank")
                if self.config.checkpoint.resume != "auto":
                    raise failure
                if self.env.is_main:
                    warnings.warn(f"skipping checkpoint {directory.name}: {failure}", stacklevel=2)
                continue
            state = apply_checkpoint(files, directory, self.model, self.optimizer, self.scheduler, self.ema,
                                     self.env)
            self.step, self.skipped.total = int(state["step"]), int(state.get("skipped_steps", 0))
            self.trained_seconds = float(state.get("trained_seconds", 0.0))
            self.stream.load_state_dict(state["data"])
            return
        if self.resume_candidates:
            raise ConfigError(f"no checkpoint of {self.run_dir} loads (see the warnings); --resume none starts over, "
                              "or move the damaged ones away")

    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accumulation` micro-batches; -> loss, accuracy, lr, grad_norm, skipped
        (1.0 when the loss or gradient norm was not finite on some rank: then nothing was updated)."""
        c, env = self.config, self.env
        accumulation = c.train.grad_accumulation
        totals = torch.zeros(2, device=env.device)  # loss, accuracy: one host sync per step, not per micro-batch
        for micro in range(accumulation):
            batch = self.prepare(self.stream.draw(self.step, micro))
            masks = generator(c.train.seed, self.step, micro, MASK_STREAM)
            last = micro == accumulation - 1
            ddp = isinstance(self.model, DistributedDataParallel)
            sync = self.model.no_sync() if ddp and not last else nullcontext()  # all-reduce on the last only
            with sync:
                with autocast(c.train, env):
                    loss, accuracy = self.objective(self.model, batch, masks, env.rank, env.world_size)
                (loss / accumulation).backward()
            totals += torch.stack([loss.detach().float(), accuracy.float()]) / accumulation
        params = [param for param in self.model.parameters() if param.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, math.inf if c.optim.grad_clip is None else c.optim.grad_clip)
        logs = {"lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
        loss_mean, accuracy_mean = totals.tolist()
        # Every rank must agree (DDP/FSDP step together); a skipped step changes no weight, moment or lr.
        skipped = any_rank(not all_finite(loss_mean, logs["grad_norm"]), env)
        if not skipped:
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(unwrap(self.model))
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.skipped.record(skipped, self.step, {"loss": loss_mean, "grad_norm": logs["grad_norm"]})
        return {"loss": loss_mean, "accuracy": accuracy_mean, **logs, "skipped": float(skipped)}

    def tokens_per_step(self) -> int:
        sample = self.sources[0].head(1)[0]
        frames, height, width = sample["tokens"].shape if "tokens" in sample else (
            len(sample["frames"]), *(size // self.tokenizer.downsample_factor for size in sample["frames"].shape[1:3]))
        return self.config.data.batch_size * self.config.train.grad_accumulation * frames * height * width

    def _mean_over_ranks(self, logs: dict[str, float]) -> dict[str, float]:
        if self.env.world_size == 1:
            return logs
        values = torch.tensor([logs["loss"], logs["accuracy"]], device=self.env.device, dtype=torch.float64)
        dist.all_reduce(values)
        return {**logs, "loss": values[0].item() / self.env.world_size,
                "accuracy": values[1].item() / self.env.world_size}

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.model, self.model_config, self.optimizer, self.scheduler,
                               self.ema, self.stream.state_dict(), self.config.checkpoint.keep, self.env,
                               self.skipped.total, self.trained_seconds)

    def sample_videos(self) -> None:
        fixed = self.prepare(self.sources[0].head(self.config.logging.num_samples))
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        with autocast(self.config.train, self.env):  # every rank runs the model (FSDP needs them all)
            tokens = sample_tokens(model, fixed, self.config.logging.sample_steps, self.config.train.seed)
        if self.env.is_main:
            write_sample_videos(self.tokenizer, tokens.cpu(), self.run_dir, self.step)

    def fit(self, progress: bool = True) -> STPT:
        c, env = self.config, self.env
        self.resume()
        if env.is_main:
            atomic_write_text(self.run_dir / CONFIG_FILE, dump_yaml(c))
        with ExitStack() as closing:
            metrics = MetricsLog(self.run_dir, self.step, c.logging.tensorboard) if env.is_main else None
            if metrics is not None:
                closing.callback(metrics.close)
            bar = closing.enter_context(tqdm(total=c.train.steps, initial=self.step, desc="stpt",
                                             disable=not (progress and env.is_main)))
            self._loop(metrics, bar)
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        return model.eval()

    def _loop(self, metrics: MetricsLog | None, bar: tqdm) -> None:
        c, env = self.config, self.env
        tokens_per_step = self.tokens_per_step()
        start = time.monotonic()
        self.model.train()
        with stop_on_signals() as signalled:
            while self.step < c.train.steps and self.time_spent() < 1:
                step_start = time.monotonic()
                logs = self.train_step()
                step_seconds = time.monotonic() - step_start
                self.trained_seconds += step_seconds
                logs["tokens_per_second"] = tokens_per_step / step_seconds
                logs["skipped_steps"] = self.skipped.total
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['accuracy']:.3f}",
                                tok_s=f"{logs['tokens_per_second']:.0f}", skipped=self.stream.num_skipped,
                                skipped_steps=self.skipped.total)
                out_of_time = c.train.max_minutes is not None and time.monotonic() - start > 60 * c.train.max_minutes
                budget_spent = self.time_spent() >= 1
                stop = any_rank(signalled[0] or out_of_time or budget_spent, env)
                if stop and budget_spent and env.is_main and not bar.disable:
                    tqdm.write(f"stpt: time budget of {c.train.time_budget_minutes:g} min spent, stopping at step "
                               f"{self.step} of {c.train.steps}")
                last = stop or self.step == c.train.steps
                if self.step % c.logging.every == 0 or last:
                    logs = self._mean_over_ranks(logs)
                    logs.update(self.stream.skip_totals(env.device))  # stops a source past its max_skip_rate
                    if metrics is not None:
                        metrics.log(self.step, logs)
                if c.logging.sample_every and self.tokenizer is not None and self.step % c.logging.sample_every == 0:
                    self.sample_videos()
                if self.step % c.checkpoint.every == 0 or last:
                    self.save()
                if stop:
                    break


def open_tokenizer(path: str | None, device: torch.device | str, key: str = "model.tokenizer") -> VQGAN | None:
    if path is None:
        return None
    try:
        return VQGAN.from_pretrained(vqgan_dir(path)).to(device).eval()
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: {' '.join(str(error).split())}") from None


def open_text_encoder(path: str | None) -> TextEncoder | None:
    if path is None:
        return None
    try:
        return CachedTextEncoder(load_text_encoder(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.text_encoder: {' '.join(str(error).split())}") from None


@contextmanager
def hold_run(run_dir: Path, env: DistributedEnv) -> Iterator[None]:
    """Rank 0 holds the run directory's lock (wd_tokenizer.runlock) and removes what killed saves left; every rank
    raises RunDirectoryBusy when it cannot (the others would otherwise wait for rank 0 forever)."""
    with ExitStack() as stack:
        error = None
        if env.is_main:
            try:
                stack.enter_context(hold_run_directory(run_dir))
                remove_leftovers(run_dir)
            except OSError as caught:
                error = caught
        if any_rank(error is not None, env):
            raise error or RunDirectoryBusy(f"{run_dir}: rank 0 could not take the run directory")
        yield


def train_stpt(config: STPTRunConfig, run_dir: str | Path, progress: bool = True) -> STPT:
    """Train (or resume, per `config.checkpoint.resume`) the STPT of `config` in `run_dir`; -> the model in eval
    mode (the EMA weights when EMA is on). Under torchrun every rank calls this; rank 0 writes the files."""
    env = init_distributed(config.train)
    with hold_run(Path(run_dir), env):
        return STPTTrainer(config, run_dir, env).fit(progress)
