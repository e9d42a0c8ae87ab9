"""Helpers shared by the command modules: one-line errors and exit codes, options they all read alike."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager

import typer

from ..defaults import DEFAULTS
from ..errors import EXIT_USAGE, IraeError, QuietError, one_line

# `irae restore` and `irae benchmark quality` take the same required --task.
TASK = typer.Option(..., "--task", "-t", help="denoise, jpeg, inpaint, or auto: each file to the task "
                    "its flaw needs (JPEG quality, measured noise) or copied as it is.")
# `irae restore` and `irae benchmark quality` take the same --backend (speed takes a list of them).
BACKEND = typer.Option("auto", "--backend", help="auto, torch or onnxruntime (CPU, fp32; needs pip install "
                       "'irae\\[onnx]'). auto: onnxruntime on a CPU without native bf16 when installed, else torch.")


@contextmanager
def user_errors(resume_hint: str = ""):
    """Turn an IraeError (or bad value) into one line on stderr and its exit code; no traceback.
    ``resume_hint``: how to finish the work after Ctrl-C (said on the interrupt line)."""
    try:
        yield
    except IraeError as e:
        if not isinstance(e, QuietError):
            print(f"irae: error: {one_line(e)}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        print(f"irae: interrupted; finished files are complete, none is half-written{resume_hint}", file=sys.stderr)
        raise typer.Exit(130) from None


def finish_hint(skip_existing: bool, overwrite: bool) -> str:
    """How a restore or degrade stopped by Ctrl-C is finished (its written files are kept)."""
    if skip_existing:
        return "; to finish, run the same command again"
    if overwrite:  # --skip-existing would keep outputs of the earlier run it was replacing
        return "; to finish, run the same command again (it replaces every output again)"
    return "; to finish, run it again with --skip-existing"


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"irae: error: {one_line(message)}", file=sys.stderr)
    raise typer.Exit(code)


def parse_list(text: str | None, cast=float, name: str = "value") -> list:
    """'15,25,50' -> [15.0, 25.0, 50.0]; None -> []; raises IraeError naming the option on bad or empty input."""
    if text is None:
        return []
    try:
        values = [cast(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IraeError(f"{name}: cannot read {text!r}; give comma-separated numbers, e.g. 15,25,50") from None
    if not values:
        raise IraeError(f"{name} {text!r} gives no value; give comma-separated numbers, e.g. 15,25,50, "
                        f"or leave the option out for its default")
    return values


def parse_names(text: str | None, name: str = "value") -> list[str] | None:
    """'box,strokes' -> ['box', 'strokes']; None -> None; an option given with no names is a usage error."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise IraeError(f"{name} {text!r} gives no value; give comma-separated names, e.g. box,strokes, "
                        f"or leave the option out for its default")
    return names


# Options whose empty value means something ("no suffix"); any other empty argument is a usage error.
EMPTY_ALLOWED = {"--suffix"}


def empty_argument_problem(argv: list[str]) -> str | None:
    """An empty value (--weights '', --report=, or an empty INPUT) would silently mean a default or '.'."""
    previous = None
    for i, token in enumerate(argv):
        if token == "--":
            previous = None
            continue
        if token.startswith("--") and "=" in token:
            option, value = token.split("=", 1)
            if not value.strip() and option not in EMPTY_ALLOWED:
                return f"{option} is empty; give a value or leave the option out"
        elif not token.strip():
            if previous is not None and previous.startswith("-") and previous != "-":
                if previous not in EMPTY_ALLOWED:
                    return f"{previous} has an empty value; give a value or leave the option out"
            else:
                return f"argument {i + 1} is empty; give a file or folder name"
        previous = token
    return None


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


def _listed(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# The defaults as the help texts quote them, from the one table (irae_cli/defaults.py).
TRAIN_SIGMA = f"{DEFAULTS.sigma_range[0]:g}-{DEFAULTS.sigma_range[1]:g}"
TRAIN_QUALITY = f"{DEFAULTS.quality_range[0]}-{DEFAULTS.quality_range[1]}"
HOLE_RATIO = f"{DEFAULTS.hole_range[0]:g}-{DEFAULTS.hole_range[1]:g}"
MASKS = _listed(DEFAULTS.masks)
SIGMAS = _listed(DEFAULTS.sigmas)
QUALITIES = _listed(DEFAULTS.qualities)
SUBSAMPLING = DEFAULTS.subsampling
