"""One ``--report`` from the processes of a torchrun job: each writes its own part, process 0 joins them.

Appends from several machines to one file are not safe on network file systems, so process K
writes ``REPORT.rankK`` and, once every process is done, process 0 appends the parts in rank
order to REPORT and deletes them.  A job that is killed leaves its parts next to the report,
each with whole lines for the files it wrote; the next run adds them to the report first with
``--skip-existing``, discards them with ``--overwrite``, and otherwise refuses to start.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .errors import IraeError, io_reason

CHUNK = 1 << 20


def part_path(report: Path, rank: int) -> Path:
    return report.with_name(f"{report.name}.rank{rank}")


def leftover_parts(report: Path) -> list[Path]:
    """Parts an interrupted torchrun job left next to ``report``, in rank order."""
    pattern = re.compile(re.escape(report.name) + r"\.rank(\d+)")
    try:
        names = os.listdir(report.parent)
    except OSError:
        return []
    found = [(int(m.group(1)), report.with_name(n)) for n in names if (m := pattern.fullmatch(n))]
    return [p for _, p in sorted(found) if p.is_file() and not p.is_symlink()]


def join_parts(report: Path, parts: list[Path]) -> str | None:
    """Append each part's lines to ``report`` (created if missing) and delete the part.

    Returns None, or one line saying what could not be added: that part and the ones after
    it are kept, and the report holds whole lines only.
    """
    try:
        out = open(report, "ab", buffering=0)
    except OSError as e:
        return _kept(report, parts, e)
    with out:
        for i, part in enumerate(parts):
            start = out.tell()
            try:
                _end_line(report, out)
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, CHUNK)
                _end_line(report, out)  # a part cut mid-line by a kill
            except OSError as e:
                try:
                    os.ftruncate(out.fileno(), start)
                except OSError:
                    pass
                return _kept(report, parts[i:], e)
            part.unlink(missing_ok=True)
    return None


def settle_leftovers(report: Path, keep: bool) -> None:
    """Before a run: fold an interrupted job's parts into ``report`` (``keep``) or delete them."""
    parts = leftover_parts(report)
    if not parts:
        return
    if keep:
        problem = join_parts(report, parts)
        if problem:
            raise IraeError(problem)
        return
    for part in parts:
        try:
            part.unlink()
        except OSError as e:
            raise IraeError(f"--report {report}: cannot remove {part} ({io_reason(e)}); remove it by hand") from None


def _end_line(report: Path, out) -> None:
    if out.tell() == 0:
        return
    with open(report, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            out.write(b"\n")


def _kept(report: Path, parts: list[Path], e: OSError) -> str:
    shown = ", ".join(str(p) for p in parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
    return (f"--report {report}: cannot add the parts of the processes ({io_reason(e)}); {shown} kept: "
            f"run again with --skip-existing to add them")
