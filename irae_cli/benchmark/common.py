"""What every benchmark report shares: schema tags, the environment it ran in, JSON, report paths."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import IraeError
from ..imageio import atomic_write_bytes

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


def versions(device: torch.device | None = None) -> dict:
    """Everything whose version can move a figure: library versions and the device actually used."""
    import PIL

    return {
        "irae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "device": device_name(device) if device is not None else None,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


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


def check_outputs(paths: list[str | Path | None], overwrite: bool) -> None:
    """Refuse before any work is done if a report file would replace one the user has."""
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_dir():
            raise IraeError(f"{p}: is a folder; give a file name for the report")
        if p.exists() and not overwrite:
            raise IraeError(f"{p}: already exists; refusing to overwrite (use --overwrite or another name)")
