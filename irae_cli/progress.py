"""The one progress display of every command: a rich bar on a terminal, plain lines elsewhere.

On a terminal (or when asked with ``live=True``) a rich bar shows the label, the
count, any named fields and the time left; lines said meanwhile print above the
bar.  Without a terminal the bar is replaced by a plain status line at most every
``plain_every`` seconds (``None``: no status lines at all, only what is said),
so a log file gets a heartbeat and not a thousand carriage returns.  ``quiet``
silences the bar and the status lines but never what is said: errors still
print.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .errors import one_line


def default_echo(msg: str) -> None:
    """One-line notices (warnings, notes) to stderr."""
    print(one_line(msg), file=sys.stderr, flush=True)


class Progress:
    def __init__(self, label: str, total: int | None = None, *, completed: int = 0, fields: dict | None = None,
                 columns: tuple[str, ...] = (), unit: str = "", stream: TextIO | None = None,
                 live: bool | None = None, quiet: bool = False, transient: bool = True,
                 plain_every: float | None = None) -> None:
        """``columns`` are format strings over ``fields`` (e.g. ``"loss {loss}"``), shown after the count."""
        self.label, self.total, self.completed, self.unit = label, total, completed, unit
        self.fields = dict(fields or {})
        self.columns = columns
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.plain_every = plain_every
        self._last_plain = 0.0
        self._bar = None
        if not quiet and (live if live is not None else _isatty(self.stream)):
            self._start_bar(transient)

    def _start_bar(self, transient: bool) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        extra = [TextColumn(_rich_template(c), markup=False) for c in self.columns]
        unit = [TextColumn(self.unit, markup=False)] if self.unit else []
        self._bar = RichProgress(TextColumn(self.label, markup=False), BarColumn(), MofNCompleteColumn(), *unit,
                                 *extra, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=transient)
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed, **self.fields)

    @property
    def live(self) -> bool:
        return self._bar is not None

    def update(self, *, completed: int | None = None, advance: int = 0, total: int | None = None,
               force: bool = False, announce: bool = True, **fields) -> None:
        """Move the count and/or change fields.  Without a bar, ``force`` prints a status line now and
        ``announce=False`` prints none (a count that moves every step would crowd out the lines that
        carry fresh fields)."""
        if total is not None:
            self.total = total
        self.completed = (completed if completed is not None else self.completed) + advance
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total, **self.fields)
        elif announce and not self.quiet and self.plain_every is not None and (
                force or time.monotonic() - self._last_plain >= self.plain_every):
            self._last_plain = time.monotonic()
            self.say(self.status_line())

    def status_line(self) -> str:
        of = f"/{self.total}" if self.total else ""
        parts = [f"{self.label} {self.completed}{of}", *(c.format(**self.fields) for c in self.columns)]
        return "  ".join(parts)

    def say(self, line: str) -> None:
        """One line on the stream, above the bar when there is one (also when quiet: errors must show)."""
        line = one_line(line)
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rich_template(column: str) -> str:
    """``"loss {loss}"`` -> rich's ``"loss {task.fields[loss]}"`` (format specs kept)."""
    import re

    return re.sub(r"\{(\w+)([^}]*)\}", r"{task.fields[\1]\2}", column)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
