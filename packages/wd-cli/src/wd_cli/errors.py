"""User mistakes at the command line end as one click error line, never a traceback; warnings print as one line."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import click
from wd_data import MediaReadError


def one_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none). An EOFError, which click would
    print as a bare "Aborted!", says that a file ended early."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return f"a file ended early ({line})" if isinstance(error, EOFError) and "EOF" not in line else line


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """User mistakes (bad files, checkpoints or values) end as a one-line click error, never a traceback."""
    try:
        yield
    except (OSError, MediaReadError, ValueError, EOFError) as error:  # OSError: missing or unwritable files
        raise click.ClickException(one_line(error)) from None


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, warnings print as `Warning: message` on stderr (no source line under them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *rest: click.echo(f"Warning: {one_line(message)}", err=True)
        yield
