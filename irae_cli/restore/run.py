"""``restore()``: plan, dry run or load the model, run the batches, summarise; on one process or many."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from ..distributed import Dist, init_distributed, rank_device
from ..errors import IraeError
from ..report_parts import settle_leftovers
from ..shard import parse_shard
from ..routing import AUTO
from .auto import AutoModels
from .batches import run_plan
from .dry_run import dry_run
from .options import RestoreOptions
from .plan import Plan, plan_restore
from .report import RestoreSummary
from .restorer import load_restorer
from .scale_out import GROUP_TIMEOUT, _split, plan_digest, report_target, start_report, summarise


def restore(input: str | Path, output: str | Path, opts: RestoreOptions, *, progress: bool = False,
            quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> RestoreSummary:
    """Restore ``input`` (a file or folder) into ``output``; see the package docstring.

    Raises ``IraeError`` (exit 2) before any work for usage problems; per-file
    problems are reported and counted, and the summary's ``exit_code`` is 1
    when any file failed.

    Under torchrun every process plans the whole run, they check that their plans agree,
    and each restores its pixel-balanced part on its own device; a usage error is said once
    (by process 0) and every process exits with the worst code of all.  ``opts.shard``
    restricts the run to one part first (see shard.py).
    """
    # Only small Python objects travel between the processes: gloo, also when they restore on GPUs.
    ctx = init_distributed(None, GROUP_TIMEOUT)
    try:
        return _restore(input, output, opts, ctx, progress, quiet, out or sys.stdout, err or sys.stderr)
    finally:
        # Every way out (a dry run, a usage error said by all, the end of the work) ends the group: a
        # process that exits with gloo's threads still running is aborted ("terminate called ...").
        ctx.close()


def _restore(input: str | Path, output: str | Path, opts: RestoreOptions, ctx: Dist, progress: bool, quiet: bool,
             out: TextIO, err: TextIO) -> RestoreSummary:
    plan, device = _plan_everywhere(input, output, opts, ctx)
    opts = plan.options
    shard = parse_shard(opts.shard) if opts.shard is not None else None
    whole, parts, pixels = _split(plan, shard, ctx)
    problems = whole.problems()
    if opts.dry_run:
        return dry_run(whole, parts, pixels, problems, opts, shard, ctx, out, err)
    if problems:
        ctx.fail(problems[0] if len(problems) == 1 else " | ".join(problems))
    mine = parts[ctx.rank]
    restorer, loaded = _get_ready(mine, opts, device, ctx)
    report, append = report_target(opts, ctx)
    label = f"restoring (process {ctx.rank} of {ctx.world})" if ctx.active else "restoring"
    summary = run_plan(mine, restorer, loaded, opts, report, append, progress=progress and ctx.main, quiet=quiet,
                       err=err, label=label)
    return summarise(summary, opts, shard, ctx, quiet, err)


def _plan_everywhere(input: str | Path, output: str | Path, opts: RestoreOptions, ctx: Dist) -> tuple[Plan, object]:
    """This process's device and the whole plan; one process's usage error, or plans that differ, stop all."""
    plan, device, failure = None, None, None
    try:
        device = rank_device(opts.device, world=ctx.world, local_rank=ctx.local_rank)
        plan = plan_restore(input, output, opts)
    except IraeError as e:
        failure = e
    ctx.agree(failure, plan_digest(plan) if ctx.active and plan is not None else None)
    return plan, device


def _get_ready(plan: Plan, opts: RestoreOptions, device, ctx: Dist):
    """Load the model onto this process's device, and (process 0) settle the report; a failure stops all."""
    restorer, loaded, failure = None, None, None
    report = Path(opts.report) if opts.report is not None else None
    try:
        if device.type == "cuda" and ctx.active:
            import torch

            torch.cuda.set_device(device)
        if opts.task == AUTO:  # each task's model loads when a file first needs it
            restorer, loaded = AutoModels(opts, plan.jobs, device, plan.max_quality), None
        else:
            restorer, loaded = load_restorer(opts, plan.jobs, device)
        if report is not None and ctx.main:
            settle_leftovers(report, keep=opts.skip_existing)
            if ctx.active:
                start_report(report, opts)
    except IraeError as e:
        failure = e
    ctx.agree(failure)
    return restorer, loaded
