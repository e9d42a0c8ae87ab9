"""Helpers shared by the command modules: one-line errors and exit codes."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager

import typer

from ..errors import EXIT_USAGE, IraeError, one_line


@contextmanager
def user_errors():
    """Turn an IraeError (or bad value) into one line on stderr and its exit code; no traceback."""
    try:
        yield
    except IraeError as e:
        print(f"irae: error: {one_line(e)}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        print("irae: interrupted; finished files are complete, none is half-written", file=sys.stderr)
        raise typer.Exit(130) from None


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"irae: error: {one_line(message)}", file=sys.stderr)
    raise typer.Exit(code)


def parse_list(text: str | None, cast=float, name: str = "value") -> list:
    """'15,25,50' -> [15.0, 25.0, 50.0]; raises IraeError naming the option on bad input."""
    if text is None or text == "":
        return []
    try:
        return [cast(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IraeError(f"{name}: cannot read {text!r}; give comma-separated numbers, e.g. 15,25,50") from None


def parse_range(text: str, cast=float, name: str = "value") -> tuple:
    """'0-55' -> (0.0, 55.0); '25' -> (25.0, 25.0).  Values are non-negative."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(?:-\s*([0-9.]+)\s*)?", text or "")
    try:
        lo = cast(m.group(1))
        hi = cast(m.group(2)) if m.group(2) is not None else lo
    except (AttributeError, ValueError):
        raise IraeError(f"{name}: cannot read {text!r}; give a value or a range like 0-55") from None
    if lo > hi:
        raise IraeError(f"{name}: range {text!r} has its low end above its high end")
    return lo, hi
