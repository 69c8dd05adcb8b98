"""How a run tells a person what it does: one-line messages through the ``sitegen`` logger
(the CLI prints them to stderr; a library caller configures logging as it likes), and
progress bars (tqdm, on stderr) where work takes long enough to watch."""

from __future__ import annotations

import logging

import click

log = logging.getLogger("sitegen")


class EchoHandler(logging.Handler):
    """Each record as one line on the current stderr (click resolves it at each call, so a
    redirected or captured stderr is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def show_messages() -> None:
    """Print the ``sitegen`` logger's INFO messages on stderr (once per process)."""
    if not any(isinstance(h, EchoHandler) for h in log.handlers):
        log.addHandler(EchoHandler())
    log.setLevel(logging.INFO)
