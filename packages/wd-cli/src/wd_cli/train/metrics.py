"""Rank 0's metrics: `run_dir/metrics.jsonl` (one line per logged step) and optional TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from wd_tokenizer.training import kept_metrics, metrics_line

from wd_cli.train.configfile import ConfigError


class MetricsLog:
    """Appends `{"step": ..., name: value}` lines; on resume the lines after the checkpoint's step go, so each
    step is logged once (wd_tokenizer's training does the same)."""

    def __init__(self, run_dir: Path, resumed_step: int, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        kept_metrics(self.path, resumed_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # the optional `tensorboard` extra
            except ImportError:
                raise ConfigError("logging.tensorboard: needs the tensorboard package "
                                  "(pip install 'wd-cli[tensorboard]')") from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a") as handle:
            handle.write(metrics_line({"step": step, **values}))
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
