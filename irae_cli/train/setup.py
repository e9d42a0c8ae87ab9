"""What a run starts from, as values for ``Trainer`` to hold: its config (fresh or resumed), its output
files, its training pixels with the sampler and degrader that draw from them, and a resume's counters."""

from __future__ import annotations

import dataclasses
import math
import uuid
from pathlib import Path

import torch

from ..degradations import derive_seed
from ..errors import IraeError
from .checkpoint import load_checkpoint, load_init_weights
from .config import Session, TrainConfig, build_config, merge_resumed_config
from .data import PatchSampler, load_training_data, replay_warning
from .degrader import Degrader
from .outputs import RunFiles, check_output_space, derived_paths, refuse_foreign_outputs


def run_config(s: Session, given: dict, device: torch.device,
               note) -> tuple[dict | None, TrainConfig, str, Session]:
    """(checkpoint or None, config, run id, session): a resume's, with the options given on top and its
    validation carried on, or a fresh run's with the session as given."""
    if s.resume:
        ckpt = load_checkpoint(Path(s.resume))
        meta = ckpt["meta"]
        config = merge_resumed_config(TrainConfig.from_dict(meta["config"]), given, note)
        return ckpt, config, meta["run_id"], resume_validation(s, meta.get("validation"), note)
    config = build_config(given, device)
    if config.steps is None and s.minutes is None:
        raise IraeError("give --steps N and/or --minutes M (the run needs an end)")
    return None, config, uuid.uuid4().hex, s


def validation_record(s: Session) -> dict:
    """How a run validates, kept in its checkpoint so that --resume goes on validating the same way."""
    return {"val": None if s.val is None else str(s.val), "every": s.val_every, "crop": s.val_crop,
            "seed": s.val_seed}


def resume_validation(s: Session, record: dict | None, note) -> Session:
    """The session a resume runs: without --val it validates as the run did (its folder, crop, seed and
    interval, where the options leave them open); --val given takes over. A folder gone since is said,
    not silently dropped."""
    if not record or record.get("val") is None:
        return s
    if s.val_every is None:
        s = dataclasses.replace(s, val_every=record.get("every"))
    if s.val is not None:
        return s
    if not Path(record["val"]).is_dir():
        note(f"irae: note: the run validated on {record['val']}, which is not there now; this session trains "
             f"without validation (give --val FOLDER to validate)")
        return s
    note(f"irae: note: validating on {record['val']} as the run did (--val to change)")
    return dataclasses.replace(s, val=Path(record["val"]), val_crop=int(record["crop"]),
                               val_seed=int(record["seed"]))


def run_files(s: Session, config: TrainConfig, ckpt: dict | None, run_id: str, main: bool, note):
    """(RunFiles, the log an earlier session left, init-from record, init-from state), checked before any
    photo loads: whose files the outputs are, the space they need, --stop-at, --init-from."""
    resumed = ckpt is not None
    out, ckpt_path, log_path = derived_paths(s)
    files = RunFiles(out, ckpt_path, log_path, main=main, note=note)
    earlier_log = None
    if main:  # only rank 0 writes, so only rank 0 asks (others would race with its first writes)
        earlier_log = refuse_foreign_outputs(out, ckpt_path, log_path, overwrite=s.overwrite,
                                             run_id=run_id if resumed else None, resume=s.resume)
        check_output_space(out, ckpt_path, log_path, config, ckpt["meta"]["model_config"] if resumed else None)
    if s.stop_at is not None and s.stop_at < 1:
        raise IraeError(f"--stop-at must be at least 1, not {s.stop_at}")
    if resumed:
        return files, earlier_log, ckpt["meta"].get("init_from"), None
    if config.init_from:
        return files, earlier_log, *load_init_weights(config)
    return files, earlier_log, None, None


def training_inputs(s: Session, c: TrainConfig, ckpt: dict | None, device: torch.device, rank: int, task,
                    task_params: dict, note):
    """(TrainData, the data generator, PatchSampler, Degrader) of this rank."""
    source = Path(s.data) if s.data else (Path(ckpt["meta"]["data"]["source"]) if ckpt else None)
    if source is None:
        raise IraeError("DATA is required: a folder of training photos or a .safetensors pack")
    data = load_training_data(source, c.patch, device, note)
    if ckpt and (warning := replay_warning(ckpt["meta"]["data"], data.description)):
        note(warning)
    # Each rank draws its own patches; the sampler, the degrader and the gain probe share data_gen.
    data_gen = torch.Generator(device=data.device).manual_seed(derive_seed(c.seed, "data", rank))
    host_gen = torch.Generator().manual_seed(derive_seed(c.seed, "host", rank))
    torch.manual_seed(derive_seed(c.seed, "torch"))
    degrader = Degrader(task, c, device, data_gen, host_gen, task_params)
    if degrader.nvjpeg_problem:
        note(f"irae: note: nvJPEG is not usable here ({degrader.nvjpeg_problem}); the 4:4:4 JPEG "
             f"degradation runs in Pillow on the CPU")
    return data, data_gen, PatchSampler(data, c.patch, data_gen), degrader


def resume_counters(state, guard, meta: dict) -> None:
    """A checkpoint's counters into the run's state and its divergence guard."""
    state.step, state.patches_seen = int(meta["step"]), int(meta["patches_seen"])
    state.train_seconds, state.sessions = float(meta["train_seconds"]), int(meta.get("sessions", 1)) + 1
    guard.load_state(meta.get("divergence_guard"))


def check_resumable(s: Session, config: TrainConfig, step: int) -> None:
    if config.steps is None and s.minutes is None:
        raise IraeError(f"{s.resume}: the run's length was to be set by --minutes; give --minutes or --steps")
    if step >= (config.steps or math.inf):
        raise IraeError(f"{s.resume}: the run already completed its {config.steps} steps; "
                        f"give a larger --steps to extend it")
