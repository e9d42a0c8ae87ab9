"""What every benchmark report shares: schema tags, metric conventions, JSON, report paths."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import IraeError
from ..files import atomic_write_bytes, folder_problem

QUALITY_SCHEMA = "irae.benchmark.quality/1"
SPEED_SCHEMA = "irae.benchmark.speed/1"
INVERTIBILITY_SCHEMA = "irae.benchmark.invertibility/1"

METRIC_CONVENTIONS = (
    "BasicSR/KAIR paper preset: outputs clamped and rounded to uint8 levels (u8), float64 math, "
    "border 0, mean of per-image values (inf = exact image, left out of the mean and counted in n_inf); "
    "rgb = all channels, y601 = MATLAB rgb2ycbcr BT.601 luma; SSIM = Gaussian 11x11 sigma 1.5, valid "
    "region, per channel then averaged; psnrb = PSNR-B (Yim & Bovik) on Y; psnr_hole = PSNR over "
    "missing pixels only"
)


def _json_value(v):
    """JSON has no inf/nan: store them as null (counts of exact images are kept separately)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def to_json(result: dict) -> str:
    return json.dumps(_json_value(result), indent=2, allow_nan=False) + "\n"


def write_json(result: dict, path: str | Path, *, overwrite: bool = False) -> None:
    atomic_write_bytes(path, to_json(result).encode(), overwrite=overwrite)


def check_outputs(outputs: dict[str, str | Path | None], overwrite: bool) -> None:
    """Refuse before any work is done a report file (by option name) that would replace one the user has or
    that cannot be written where it is asked for, or that another of them would replace."""
    given = {option: Path(p) for option, p in outputs.items() if p is not None}
    reals = [os.path.realpath(p) for p in given.values()]
    if len(set(reals)) < len(reals):
        raise IraeError(f"{' and '.join(given)} name the same file ({next(iter(given.values()))}); give each its own")
    for option, p in outputs.items():
        if p is None:
            continue
        p = Path(p)
        if p.is_dir():
            raise IraeError(f"{option} {p}: is a folder; give a file name")
        if p.exists() and not overwrite:
            raise IraeError(f"{option} {p}: already exists; refusing to overwrite (use --overwrite or another name)")
        problem = folder_problem(p.parent, f"{option} folder")
        if problem:
            raise IraeError(problem)
