"""What a run shows while it runs: a rich bar on a terminal, plain lines otherwise, nothing with -q; notices."""

from __future__ import annotations

import sys
import time

from .config import Session


def default_echo(msg: str) -> None:
    """One-line notices (warnings, notes) to stderr."""
    from ..errors import one_line

    print(one_line(msg), file=sys.stderr, flush=True)


class Reporter:
    """A rich progress bar on a terminal; plain lines (at most every 10 s) otherwise; nothing with -q."""

    def __init__(self, session: Session, total: int | None, start: int, enabled: bool) -> None:
        self.enabled = enabled and not session.quiet
        tty = sys.stderr.isatty()
        self.live = self.enabled and (session.progress if session.progress is not None else tty)
        self.progress = None
        self.last_line = 0.0
        self.fields = {"loss": "-", "speed": "-", "val": "-"}
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                                     TextColumn("val {task.fields[val]}"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=total, completed=start, **self.fields)

    def set_total(self, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, total=total)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step)

    def update(self, step: int, total: int | None, force: bool = False, **fields) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, **self.fields)
        elif self.enabled and (force or time.monotonic() - self.last_line >= 10):
            self.last_line = time.monotonic()
            of = f"/{total}" if total else ""
            print(f"step {step}{of}  loss {self.fields['loss']}  {self.fields['speed']}  val {self.fields['val']}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
