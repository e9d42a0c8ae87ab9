"""Every default degradation range and level in one table, and the noise-protocol vocabulary.

Plain data with no torch import, so the command-line help can quote it without
loading torch: training draws blind from the ranges, test sets, the benchmark
and training validation use the levels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Defaults:
    """Every default range in one place: training draws blind from the ranges, test sets use the levels."""

    sigma_range: tuple[float, float] = (0.0, 55.0)
    quality_range: tuple[int, int] = (10, 90)
    subsampling: str = "4:2:0"
    masks: tuple[str, ...] = ("box", "strokes")
    hole_range: tuple[float, float] = (0.05, 0.4)
    sigmas: tuple[float, ...] = (15.0, 25.0, 50.0)
    qualities: tuple[int, ...] = (10, 20, 30, 40)
    noise_protocol: str = "clip"


DEFAULTS = Defaults()

# How noisy pixels are kept: "clip" = clipped and rounded to 8 bits, as real noisy files are;
# "float" = unclipped float32 (the paper's protocol, stored as .npy).  "paper" is accepted for "float".
NOISE_PROTOCOLS = ("clip", "float")
NOISE_PROTOCOL_ALIASES = {"paper": "float"}
COMPILE_MODES = ("auto", "on", "off")  # --compile of restore and train


def check_compile_mode(mode: str) -> str:
    """``mode`` when it is one of COMPILE_MODES, else the one-line usage error restore and train give."""
    from .errors import IraeError

    if mode not in COMPILE_MODES:
        raise IraeError(f"--compile must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")
    return mode
