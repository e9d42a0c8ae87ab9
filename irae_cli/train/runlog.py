"""What a run reports: its JSON log (``irae-train-log``), the environment it ran in, and its result."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..environment import device_name
from .config import TrainConfig

LOG_FORMAT = "irae-train-log"


@dataclass
class RunState:
    """How far the run is; step, patches_seen, train_seconds and sessions also go into the checkpoint."""

    step: int = 0
    patches_seen: int = 0
    train_seconds: float = 0.0  # of the earlier sessions
    sessions: int = 1
    lr: float = 0.0  # of the last step
    stopped: str = "completed"
    # the log interval being summed up: the losses stay on the device (no host sync per step)
    loss_sum: torch.Tensor | None = None
    loss_max: torch.Tensor | None = None  # the worst, for the guard of compiled steps
    interval_steps: int = 0
    unchecked: int = 0  # steps of the interval the guard has not seen one by one (compiled)
    interval_t0: float = 0.0


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


def run_summary(*, run_id: str, config: TrainConfig, model_config: dict, data: dict, steps: int, patches_seen: int,
                minutes: float, device: torch.device, dtype: str, world: int, val: dict | None, validator,
                val_seed: int, val_crop: int, stopped: str, sessions: int, jpeg_engine: str | None,
                oom_halvings: list, init_from: dict | None, compiled: dict | None = None) -> dict:
    """The run as the weights' ``training`` metadata and the log's summary record it."""
    c, v = config, validator
    return {
        "run_id": run_id, "task": c.task, "arch": c.arch, "config": c.to_dict(), "model_config": model_config,
        "data": data, "steps": steps, "steps_planned": c.steps, "patches_seen": patches_seen,
        "minutes": round(minutes, 3), "device": device_name(device), "dtype": dtype, "world_size": world,
        "val": val, "val_images": v.images if v else None, "val_seed": val_seed if v else None,
        "val_crop": val_crop if v else None, "degradation": c.degradation(), "seed": c.seed, "lr": c.lr,
        "ema": c.ema, "stopped": stopped, "sessions": sessions, "jpeg_engine": jpeg_engine,
        "oom_halvings": oom_halvings, "init_from": init_from, "torch": torch.__version__, "irae_version": __version__,
        **({"compiled": compiled} if compiled else {}),
    }
