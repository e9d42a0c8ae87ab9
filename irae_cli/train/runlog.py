"""What a run reports: its JSON log (``irae-train-log``), the environment it ran in, and its result."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from .config import TrainConfig

LOG_FORMAT = "irae-train-log"


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    log: Path
    sha256: str | None
    steps: int
    steps_planned: int | None
    patches_seen: int
    minutes: float
    stopped: str
    val: dict | None
    device: str
    summary: dict


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def open_log(earlier: dict | None, run_id: str, config: TrainConfig) -> dict:
    """The log of this run: the one an earlier session of it left (resumed into the same file), or a new one."""
    log = earlier or {"format": LOG_FORMAT, "run_id": run_id, "config": config.to_dict(),
                      "intervals": [], "val": [], "sessions": []}
    log["config"] = config.to_dict()
    return log


def session_record(step: int, device: torch.device, dtype: torch.dtype, world: int, data: dict,
                   jpeg_engine: str | None) -> dict:
    """One invocation's entry in the log: where it started and what it ran on."""
    return {"started_step": step, "device": device_name(device), "dtype": str(dtype), "world_size": world,
            "data": data, "jpeg_engine": jpeg_engine, "torch": torch.__version__, "irae": __version__,
            "argv": sys.argv[1:]}
