"""The one exception type users see: a one-line message, exit code 2."""

from __future__ import annotations

from typing import IO

import click


class SitegenError(click.ClickException):
    """Bad input or environment. ``str(err)`` is a complete one-line message naming the
    file/key and what is wrong; the CLI prints it as ``error: ...`` without a traceback
    and exits with code 2."""

    exit_code = 2

    def show(self, file: IO[str] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)
