"""User mistakes at the command line end as one click error line, never a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from wd_data import MediaReadError


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """User mistakes (bad files, checkpoints or values) end as a one-line click error, never a traceback."""
    try:
        yield
    except (OSError, MediaReadError, ValueError) as error:  # OSError: missing or unwritable files
        raise click.ClickException(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
