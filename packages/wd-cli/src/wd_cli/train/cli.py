"""The `wd train` command group: `stpt`, `tokenizer`, `export`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
from wd_data import DataSourceError
from wd_tokenizer.nonfinite import TrainingDiverged

from wd_cli.convert import check_out, overwrite_option
from wd_cli.errors import one_line
from wd_cli.train.config import STPTRunConfig
from wd_cli.train.configfile import ConfigError, load_config
from wd_cli.train.export import export_run
from wd_cli.train.parallel import close_distributed
from wd_cli.train.tokenizer import TokenizerRunConfig, train_tokenizer
from wd_cli.train.trainer import train_stpt

config_option = click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
                             help="TOML or YAML config file.")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set optim.lr=1e-4 (repeatable).")
run_dir_argument = click.argument("run_dir", type=click.Path(file_okay=False))


def config_errors_in_one_line(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn what the user or the machine must fix into one-line click errors: configuration mistakes
    (ConfigError), data that cannot feed the run (DataSourceError: a source that yields nothing or skips too
    much), files that cannot be read or written (OSError: a full disk, a busy run directory, a damaged file), a
    diverged run. Other errors keep their traceback, since mid-training they are bugs to report. Closes the
    process group either way."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ConfigError, DataSourceError, OSError, EOFError, TrainingDiverged) as error:
            raise click.ClickException(one_line(error)) from None
        finally:
            close_distributed()

    return wrapper


@click.group()
def train() -> None:
    """Train the tokenizer or the STPT, and export a run to a pipeline directory.

    \b
    Example:
      wd train stpt --config packages/wd-cli/configs/stpt-shapes.toml runs/stpt
      torchrun --nproc_per_node 8 -m wd_cli train stpt -c big.toml runs/big
    """


@train.command()
@config_option
@set_option
@click.option("--resume", default=None, help="'auto' (newest complete checkpoint), 'none', or a checkpoint path.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@run_dir_argument
@config_errors_in_one_line
def stpt(config_path: str, overrides: tuple[str, ...], resume: str | None, no_progress: bool, run_dir: str) -> None:
    """Train STPT (masked token prediction) into RUN_DIR; resumes from its newest checkpoint by default.

    \b
    Example:
      wd train stpt -c packages/wd-cli/configs/stpt-shapes.toml --set train.steps=200 runs/stpt
    """
    extra = [f"checkpoint.resume={resume}"] if resume is not None else []
    config = load_config(STPTRunConfig, config_path, [*overrides, *extra])
    train_stpt(config, run_dir, progress=not no_progress)


@train.command()
@config_option
@set_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@run_dir_argument
@config_errors_in_one_line
def tokenizer(config_path: str, overrides: tuple[str, ...], no_progress: bool, run_dir: str) -> None:
    """Train a VQGAN tokenizer into RUN_DIR (wd_tokenizer.train_vqgan); resumes from its newest checkpoint.

    \b
    Example:
      wd train tokenizer -c packages/wd-cli/configs/tokenizer-shapes.toml runs/tokenizer
    """
    train_tokenizer(load_config(TokenizerRunConfig, config_path, list(overrides)), run_dir,
                    progress=not no_progress)


@train.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--tokenizer", default=None, help="VQGAN directory (default: the run's model.tokenizer).")
@click.option("--text-encoder", default=None, help="Text encoder directory (default: the run's model.text_encoder).")
@overwrite_option
@config_errors_in_one_line
def export(run_dir: str, out_dir: str, tokenizer: str | None, text_encoder: str | None, overwrite: bool) -> None:
    """Write a pipeline directory (for wd generate) from RUN_DIR's newest checkpoint (EMA weights if kept);
    an OUT_DIR that holds something is replaced only with --overwrite.

    \b
    Example:
      wd train export runs/stpt pipelines/shapes
    """
    check_out(Path(out_dir), overwrite)
    click.echo(export_run(run_dir, out_dir, tokenizer, text_encoder))
