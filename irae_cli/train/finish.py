"""The end of a run: the last checkpoint, the final validation, the summary and the weights, the result.

Functions of the ``Trainer`` they finish: they read what the run built up and write nothing into it but
the final validation's entry of its log.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from ..environment import device_name
from .runlog import TrainResult, run_summary

if TYPE_CHECKING:
    from .trainer import Trainer


def finish(t: Trainer) -> TrainResult:
    """The end: checkpoint, final validation, weights, log; then the failed writes, if any, as one error."""
    st, files = t.state, t.files
    minutes = (st.train_seconds + t.clock() - t.t_run) / 60
    t.write_checkpoint()
    summary = final_val = sha = None
    if t.dist.main:
        final_val = _final_validation(t)
        summary = _summary(t, final_val, minutes)
        final = _final_model(t)
        sha = files.write_weights(final, t.config, t.task_params, summary)
    if t.dist.active:
        import torch.distributed as dist

        t.drop_ddp()
        dist.barrier()
        dist.destroy_process_group()
    files.raise_if_any_failed(st.step)
    if st.stopped == "interrupted":
        raise KeyboardInterrupt
    return TrainResult(out=files.out, checkpoint=files.checkpoint, log=files.log_path, sha256=sha,
                       steps=st.step, steps_planned=t.config.steps, patches_seen=st.patches_seen,
                       minutes=minutes, stopped=st.stopped, val=final_val, device=device_name(t.device),
                       summary=summary or {})


def _final_validation(t: Trainer) -> dict | None:
    if t.validation is None:
        return None
    t_val = t.clock()
    scores = t.evaluate()
    t.log["val"].append({"step": t.state.step, "levels": scores,
                         "seconds": round(t.clock() - t_val, 2), "final": True})
    return scores


def _summary(t: Trainer, final_val: dict | None, minutes: float) -> dict:
    from ..model import config_to_json

    st, s = t.state, t.session
    return run_summary(
        run_id=t.run_id, config=t.config, model_config=json.loads(config_to_json(t.model.config)),
        data=t.data.description, steps=st.step, patches_seen=st.patches_seen, minutes=minutes,
        device=t.device, dtype=t.precision.label, world=t.dist.world, val=final_val,
        validator=t.validation.validator if t.validation is not None else None, val_seed=s.val_seed,
        val_crop=s.val_crop, stopped=st.stopped, sessions=st.sessions, jpeg_engine=t.degrader.jpeg_engine,
        oom_halvings=t.log["sessions"][-1].get("oom_halvings", []), init_from=t.init_from_record)


def _final_model(t: Trainer) -> torch.nn.Module:
    """A fresh model of the preset with the weights to save: the EMA's (when on)."""
    from ..model import create_model

    final = create_model(t.config.arch)
    final.load_state_dict(t.ema.state_dict() if t.ema is not None else t.model.state_dict())
    return final
