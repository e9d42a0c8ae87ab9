"""What a run tells the user: counts and the summary line, the progress bar, one-line failures, the JSONL report."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..errors import EXIT_OK, EXIT_SOME_FAILED, IraeError, io_reason
from ..files import locked
from ..interrupts import held_interrupts
from ..progress import Progress
from .items import Item
from .plan import Job


@dataclass
class RestoreSummary:
    restored: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    exit_code: int = EXIT_OK
    copied: int = 0  # --task auto: files left as they are (copied byte for byte)
    routes: dict[str, int] = field(default_factory=dict)  # --task auto: files per route (jpeg, denoise, copied)

    def line(self) -> str:
        mps = self.megapixels / self.seconds if self.seconds > 0 else 0.0
        routes = ""
        if self.routes:
            restored = ", ".join(f"{n} {k}" for k, n in sorted(self.routes.items()) if k != "copied")
            routes = f" ({restored})" if restored else ""
            routes += f", copied {self.copied}"
        return (f"restored {self.restored}{routes}, skipped {self.skipped}, failed {self.failed} "
                f"in {self.seconds:.1f} s ({mps:.2f} MP/s)")


class Reporter:
    """Counts, progress bar, one-line failures on stderr and the JSONL report; main thread only."""

    def __init__(self, total: int, report: Path | None, append: bool, progress: bool, quiet: bool, err: TextIO,
                 common: dict, label: str = "restoring", routes: bool = False) -> None:
        self.summary = RestoreSummary()
        self.err = err
        self.quiet = quiet
        self.common = common  # fields every line of the report carries (device, dtype, weights)
        self.started = time.perf_counter()
        self.report_path = report  # this process's part of the report under torchrun
        self.report_error: str | None = None
        self.report = _open_report(report, append) if report is not None else None
        # --task auto: the bar says where the latest file went and why
        columns = ("{mps:.2f} MP/s", "{route}") if routes else ("{mps:.2f} MP/s",)
        fields = {"mps": 0.0, "route": ""} if routes else {"mps": 0.0}
        self.bar = Progress(label, total, fields=fields, columns=columns, unit="images",
                            stream=err, live=progress and not quiet, quiet=quiet)

    def say(self, line: str) -> None:
        self.bar.say(line)

    def skipped(self, job: Job, reason: str = "output exists (--skip-existing)") -> None:
        self.summary.skipped += 1
        self._write({"input": str(job.source.path), "output": str(job.output), "status": "skipped",
                     "error": None, "reason": reason})

    def done(self, item: Item) -> None:
        if item.reported:
            return
        with held_interrupts():  # Ctrl-C between the mark and the line would lose the line
            item.reported = True
            self._done(item)

    def _done(self, item: Item) -> None:
        if item.skipped:
            self.skipped(item.job, item.skipped)
            self.bar.update(advance=1)
            return
        record = {"input": str(item.job.source.path), "output": str(item.job.output),
                  "status": "failed" if item.error else "ok", "error": item.error}
        if item.hw is not None:
            h, w = item.hw
            record["size"] = [int(w), int(h)]
            if not item.error:
                self.summary.megapixels += w * h / 1e6
        record.update(seconds=round(item.seconds, 4), tiles=item.tiles, **self.common)
        record.update(item.extra)
        if item.notes:
            record["notes"] = item.notes
        self._write(record)
        if item.error:
            self.summary.failed += 1
            self.say(f"irae: failed: {item.error}")
        else:
            self._count(item)
        elapsed = time.perf_counter() - self.started
        route = f"{item.job.source.rel}: {item.route.describe()}" if item.route is not None else None
        self.bar.update(advance=1, mps=self.summary.megapixels / max(elapsed, 1e-9), route=route)

    def _count(self, item: Item) -> None:
        if item.route is None:
            self.summary.restored += 1
            return
        name = item.route.name
        self.summary.routes[name] = self.summary.routes.get(name, 0) + 1
        if item.route.task is None:
            self.summary.copied += 1
        else:
            self.summary.restored += 1

    def _write(self, record: dict) -> None:
        if self.report is None:
            return
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace"))
        start = None
        try:
            # Locked: another run appending to the same report (--skip-existing) waits, so lines never mix and
            # a cut-back below removes only this line.
            with locked(self.report):
                try:
                    start = self.report.seek(0, os.SEEK_END)
                    while data:
                        data = data[self.report.write(data):]
                except OSError:
                    _cut_back(self.report, start, close=False)
                    raise
        except OSError as e:
            # Disk full (or gone): keep the report's complete lines, cut a partial one, and go on restoring.
            _cut_back(self.report, None)
            self.report = None
            self.report_error = (f"--report {self.report_path}: cannot write ({io_reason(e)}); the report stops "
                                 f"here, restoring goes on and the run will exit 1")
            self.say(f"irae: error: {self.report_error}")

    def close(self) -> RestoreSummary:
        self.bar.close()
        if self.report is not None:
            try:
                self.report.close()
            except OSError as e:
                self.report_error = f"--report {self.report_path}: cannot write ({io_reason(e)})"
                self.say(f"irae: error: {self.report_error}")
        s = self.summary
        s.seconds = time.perf_counter() - self.started
        s.exit_code = EXIT_SOME_FAILED if s.failed or self.report_error else EXIT_OK
        return s


def _open_report(path: Path, append: bool):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: each line goes out whole or, on a full disk, is cut back off (see Reporter._write).
        report = open(path, "ab" if append else "wb", buffering=0)
        if append:
            with locked(report):
                if report.seek(0, os.SEEK_END) > 0:
                    with open(path, "rb") as f:
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":  # an earlier run killed mid-line: keep its lines whole
                            report.write(b"\n")
    except OSError as e:
        raise IraeError(f"--report {path}: cannot write ({e.strerror or e})") from None
    return report


def _cut_back(report, start: int | None, close: bool = True) -> None:
    """Drop a partly written line and (``close``) let go of the file; a second failure changes nothing."""
    try:
        if start is not None:
            os.ftruncate(report.fileno(), start)
    except OSError:
        pass
    if not close:
        return
    try:
        report.close()
    except OSError:
        pass
