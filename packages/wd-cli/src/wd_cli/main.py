"""The `wd` command. Subcommands are imported when they run: `wd info` need not load training or the pipeline."""

from __future__ import annotations

import importlib

import click

from wd_cli.threads import configure_threads

configure_threads()  # before any subcommand imports torch

# name -> "module:attribute" of its click command.
SUBCOMMANDS = {
    "convert": "wd_cli.convert:convert",
    "data": "wd_cli.data.cli:data",
    "eval": "wd_cli.evaluation:eval_command",
    "generate": "wd_cli.generate:generate",
    "play": "wd_cli.play.cli:play",
    "quickstart": "wd_cli.quickstart:quickstart",
    "train": "wd_cli.train.cli:train",
}


class LazyGroup(click.Group):
    """A click group whose `SUBCOMMANDS` are imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module, attribute = SUBCOMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wd-cli", prog_name="wd")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """WorldDreamer: a world model that generates video by predicting masked tokens.

    \b
    Example:
      wd quickstart                      # train on synthetic worlds, run every task (CPU, no download)
      wd generate --task text2video --prompt "a red circle moves up" --checkpoint wd-quickstart/pipeline --out a.gif
      wd play --checkpoint wd-quickstart/pipeline   # drive the world live in a browser
      wd info
    """
    from wd_cli.errors import one_line_warnings  # here: `wd --help` stays free of torch

    ctx.with_resource(one_line_warnings())  # every subcommand's warnings print as one line


@cli.command()
def info() -> None:
    """Show package versions, the device, the attention backend and the model presets.

    \b
    Example:
      wd info
    """
    from wd_cli.info import collect_info, format_info

    click.echo(format_info(collect_info()))
