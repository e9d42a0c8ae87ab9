"""Helpers shared by the command modules: one-line errors and exit codes, options they all read alike."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from ..defaults import DEFAULTS
from ..errors import EXIT_USAGE, IraeError, QuietError, one_line

# The options several commands share, declared once (``Annotated`` aliases: ``device: Device = "auto"``), so
# their help cannot drift apart.  Each help text says what the code does: ``inference.pick_device`` and
# ``pick_dtype``, ``backends.resolve_backend``, ``distributed.rank_device``.
_DEVICE = "auto, cpu, cuda or cuda:N (auto: the GPU when CUDA is available, else the CPU)"
Device = Annotated[str, typer.Option("--device", help=f"{_DEVICE}.")]
# restore and train run under torchrun too
DeviceTorchrun = Annotated[str, typer.Option("--device", help=f"{_DEVICE}; under torchrun auto and cuda give each "
                                             "process the GPU of its LOCAL_RANK.")]

# The one precision policy (inference.pick_dtype, inference.LowPrecision), in words.
DTYPE_POLICY = ("auto: bf16 on a GPU that supports it, and for an IRAE on a CPU with native bf16 (AVX-512 BF16 "
                "or AMX); else fp32. An IRAE casts only its coupling nets (its flow arithmetic stays fp32); a CNN "
                "runs whole.")
Dtype = Annotated[str, typer.Option("--dtype", help=f"auto, fp32, bf16 or fp16 (not on the CPU). {DTYPE_POLICY}")]
DtypeList = Annotated[str, typer.Option("--dtype", help="auto, fp32, bf16 or fp16 (not on the CPU); a comma list "
                                        f"times each. {DTYPE_POLICY}")]
TrainDtype = Annotated[str, typer.Option("--dtype", help=f"auto, fp32 or bf16. {DTYPE_POLICY}")]

_BACKEND = ("auto, torch or onnxruntime (CPU, fp32; needs pip install 'irae\\[onnx]'). auto: onnxruntime on the CPU "
            "when it is installed, --dtype is auto or fp32 and --compile is not on, else torch; "
            "IRAE_BACKEND=torch|onnxruntime sets what auto picks.")
Backend = Annotated[str, typer.Option("--backend", help=_BACKEND)]
BackendList = Annotated[str, typer.Option("--backend", help=f"{_BACKEND} A comma list, e.g. torch,onnxruntime, "
                                          "times each backend (and --dtype) in this run.")]
Compile = Annotated[str, typer.Option("--compile", help="auto, on or off: torch.compile the model (auto: only when "
                                      "the first batch shows the run is long enough to repay the compile time).")]

WEIGHTS = "Shipped weights name or a .safetensors path"
Weights = Annotated[Optional[str], typer.Option("--weights", "-w", help=f"{WEIGHTS} (default: the shipped weights "
                                                "for the task).")]
# `irae restore` and `irae benchmark quality` take the same required --task.
Task = Annotated[str, typer.Option("--task", "-t", help="denoise, jpeg, inpaint, or auto: each file to the task "
                                   "its flaw needs (JPEG quality, measured noise) or copied as it is.",
                                   show_default=False)]
Tile = Annotated[str, typer.Option("--tile", help="Tile size in pixels for large images; 0 = whole image; "
                                   "auto = 1024, halved on out-of-memory.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Images (or tiles) of equal size per model call "
                                        "(halved on out-of-memory, and kept so).")]
Seed = Annotated[int, typer.Option("--seed", help="Global seed; each image's seed derives from it, its path and "
                                   "its level.")]

# The files a command walks: restore and degrade alike (files.discover).
Recursive = Annotated[bool, typer.Option("--recursive/--no-recursive", "-r/-R",
                                         help="Walk subfolders (the output mirrors the tree).")]
Include = Annotated[Optional[list[str]], typer.Option("--include", help="Only files matching this glob "
                                                      "(repeatable; matches the relative path or the name).")]
Exclude = Annotated[Optional[list[str]], typer.Option("--exclude", help="Leave out files matching this glob "
                                                      "(repeatable).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary; errors still print.")]

# Degradation options of degrade, train and benchmark quality (the defaults from irae_cli/defaults.py).
NoiseProtocol = Annotated[Optional[str], typer.Option(
    "--noise-protocol", help="denoise: clip (the default) = clipped and rounded to 8 bits, as real noisy files "
    "are; float = unclipped float32, the papers' protocol ('paper' is accepted too).", show_default=False)]
Subsampling = Annotated[Optional[str], typer.Option(
    "--subsampling", help=f"jpeg: chroma subsampling 4:2:0, 4:2:2 or 4:4:4 (default: {DEFAULTS.subsampling}).",
    show_default=False)]
Mask = Annotated[Optional[str], typer.Option(
    "--mask", help="inpaint: mask kinds box, boxes, strokes, comma-separated (default: "
    f"{','.join(DEFAULTS.masks)}).", show_default=False)]
HoleRatio = Annotated[Optional[str], typer.Option(
    "--hole-ratio", help="inpaint: hole area fraction range, e.g. 0.1-0.3 (default: "
    f"{DEFAULTS.hole_range[0]:g}-{DEFAULTS.hole_range[1]:g}).", show_default=False)]


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
