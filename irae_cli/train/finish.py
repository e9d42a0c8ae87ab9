"""The end of a run, in pieces that take values (``Trainer.finish`` puts them together): the final
validation's log entry, the weights to save, the end of the process group."""

from __future__ import annotations

import torch

from .runlog import TrainResult


def final_validation(evaluate, clock, val_log: list, step: int) -> dict | None:
    """The scores of the weights to save (``evaluate()``; None without --val), logged as the final entry."""
    t_val = clock()
    scores = evaluate()
    if scores is not None:
        val_log.append({"step": step, "levels": scores, "seconds": round(clock() - t_val, 2), "final": True})
    return scores


def final_model(config, state: dict) -> torch.nn.Module:
    """A fresh model of ``config`` (the trained model's) holding ``state`` (the EMA's weights when on)."""
    from ..model import create_model

    final = create_model(config)
    final.load_state_dict(state)
    return final


def end_process_group(drop_ddp) -> None:
    """Under torchrun: the DDP wrapper freed (``drop_ddp``), then every rank leaves the group together."""
    import torch.distributed as dist

    drop_ddp()
    dist.barrier()
    dist.destroy_process_group()


def run_result(files, state, steps_planned: int | None, minutes: float, val: dict | None, device: str,
               summary: dict | None, sha: str | None) -> TrainResult:
    return TrainResult(out=files.out, checkpoint=files.checkpoint, log=files.log_path, sha256=sha,
                       steps=state.step, steps_planned=steps_planned, patches_seen=state.patches_seen,
                       minutes=minutes, stopped=state.stopped, val=val, device=device, summary=summary or {})
