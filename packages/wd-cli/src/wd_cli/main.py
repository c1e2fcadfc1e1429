"""The `wd` command."""

from __future__ import annotations

import click

from wd_cli.generate import generate
from wd_cli.info import collect_info, format_info
from wd_cli.train.cli import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wd-cli", prog_name="wd")
def cli() -> None:
    """WorldDreamer: a world model that generates video by predicting masked tokens.

    \b
    Example:
      wd info
    """


@cli.command()
def info() -> None:
    """Show package versions, the device, the attention backend and the model presets.

    \b
    Example:
      wd info
    """
    click.echo(format_info(collect_info()))


cli.add_command(train)
cli.add_command(generate)
