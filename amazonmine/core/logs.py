"""Where the package's messages and progress bars go.

The library only logs (``logging.getLogger(__name__)``, under the ``amazonmine`` logger) and asks
:func:`progress_bar` for its bars; the command line decides, once per command, what reaches the screen
(:func:`configure`, from ``-v``, ``-q`` and ``--no-progress``). A program that imports amazonmine and sets up
no logging sees what Python shows by default: warnings and errors, no informational lines.

Progress bars are drawn only on a terminal: piped into a file or a CI log, a bar's carriage returns are
noise, so there is none (the stage's summary line says what was done).
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Iterable, TextIO

ROOT = "amazonmine"

# Set by the command line (--no-progress, -q) for the length of one command; a library caller keeps the
# default, bars on a terminal.
_bars_allowed = True


class _EchoHandler(logging.Handler):
    """Each record as its bare message, through ``click.echo``: informational lines on stdout, where the stages'
    output has always gone; debugging lines, warnings and errors on stderr, apart from that output. The stream
    is looked up at each write, so output captured by a test runner (click's CliRunner swaps ``sys.stdout``)
    is captured."""

    def emit(self, record: logging.LogRecord) -> None:
        import click

        try:
            click.echo(self.format(record), err=record.levelno != logging.INFO)
        except Exception:  # pragma: no cover - logging's own contract: a failing handler must not raise
            self.handleError(record)


def level_for(verbose: int, quiet: bool) -> int:
    """-q: errors only; default: informational lines; -v (any count): debugging lines too."""
    if quiet:
        return logging.ERROR
    return logging.DEBUG if verbose > 0 else logging.INFO


def configure(verbose: int = 0, quiet: bool = False, progress: bool = True) -> Callable[[], None]:
    """Send the package's log records to the screen at the level ``verbose``/``quiet`` ask for, and allow or
    forbid progress bars; returns the function that puts everything back as it was (the command line calls it
    when the command ends, so that commands run one after another in one process do not stack handlers)."""
    global _bars_allowed

    logger = logging.getLogger(ROOT)
    before = (logger.level, logger.propagate, _bars_allowed)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level_for(verbose, quiet))
    # Only this handler prints: a handler another library puts on the root logger must not repeat each line.
    logger.propagate = False
    _bars_allowed = progress and not quiet

    def restore() -> None:
        global _bars_allowed

        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]
        _bars_allowed = before[2]

    return restore


def bars_allowed() -> bool:
    return _bars_allowed


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", enabled: bool = True, file: TextIO | None = None, mininterval: float = 1.0):
    """A tqdm bar (usable as an iterator or a context manager with ``update``) that draws only when the caller
    wants one (``enabled``), the command line allows it, and ``file`` (default: stderr) is a terminal."""
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    show = enabled and _bars_allowed and _is_terminal(stream)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show, file=stream, mininterval=mininterval)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
