"""One run on many processes: torchrun's processes and ``--shard K/N`` parts of one plan.

Every process plans the whole run and they check that their plans agree; each then
restores its pixel-balanced part and writes its own part of the report, which
process 0 joins at the end (shard.py, distributed.py, report_parts.py).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from ..distributed import Dist
from ..errors import EXIT_SOME_FAILED, IraeError, io_reason, one_line
from ..report_parts import join_parts, part_path
from ..shard import Shard, header_pixels, split_by_pixels
from .options import RestoreOptions
from .plan import Plan
from .report import RestoreSummary

# The processes of a torchrun job finish at different times; the first must outwait the last.
GROUP_TIMEOUT = timedelta(days=7)


def plan_digest(plan: Plan) -> str:
    """What every process of a torchrun job must agree on: each input, its output and its fate, and the problems."""
    fate = {id(j): kind for kind, jobs in (("do", plan.jobs), ("skip", plan.skipped), ("exists", plan.existing),
                                            ("onto", plan.onto_inputs)) for j in jobs}
    h = hashlib.sha256()
    for j in plan.entries:
        h.update(f"{j.source.path}\0{j.output}\0{fate.get(id(j))}\0{j.redo_empty}\n".encode("utf-8", "surrogateescape"))
    for p in plan.problems():
        h.update(p.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _split(plan: Plan, shard: Shard | None, ctx: Dist) -> tuple[Plan, list[Plan], dict[int, int]]:
    """This run's plan (``--shard``'s part of it), its parts for the processes, and each entry's pixels by id."""
    if shard is None and not ctx.active:
        return plan, [plan], {}
    paths = [j.source.path for j in plan.entries]
    pixels = [0] * len(paths)
    # Each process reads every world-th header; all of them then split the same list the same way.
    for r, mine in enumerate(ctx.all_gather(header_pixels(paths[ctx.rank::ctx.world]))):
        pixels[r::ctx.world] = mine
    chosen = list(range(len(paths)))
    if shard is not None:
        chosen = split_by_pixels(pixels, shard.count)[shard.index]
    groups = split_by_pixels([pixels[i] for i in chosen], ctx.world)
    by_id = {id(plan.entries[i]): pixels[i] for i in chosen}
    return plan.part(chosen), [plan.part([chosen[i] for i in g]) for g in groups], by_id


def start_report(report: Path, opts: RestoreOptions) -> None:
    """Process 0 of a torchrun job: the report exists (appended to, or emptied) before the parts are added."""
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        open(report, "ab" if opts.skip_existing else "wb").close()
    except OSError as e:
        raise IraeError(f"--report {report}: cannot write ({io_reason(e)})") from None


def report_target(opts: RestoreOptions, ctx: Dist) -> tuple[Path | None, bool]:
    """Where this process writes its report lines, and whether after the lines already there."""
    if opts.report is None:
        return None, False
    report = Path(opts.report)
    if ctx.active:
        return part_path(report, ctx.rank), False
    # --skip-existing resumes a run: its lines go after the earlier run's (or a concurrent run's), nothing is lost.
    return report, opts.skip_existing


def summarise(summary: RestoreSummary, opts: RestoreOptions, shard: Shard | None, ctx: Dist, quiet: bool,
              err: TextIO) -> RestoreSummary:
    """Say the summary line; under torchrun, process 0 joins the report and says the job's total."""
    of = f" (shard {shard})" if shard is not None else ""
    if not ctx.active:
        if not quiet:
            print(summary.line() + of, file=err)
        return summary
    total = _total(ctx.all_gather(summary))  # also: every part of the report is complete
    code = summary.exit_code
    if ctx.main:
        if opts.report is not None:
            problem = join_parts(Path(opts.report), [part_path(Path(opts.report), r) for r in range(ctx.world)])
            if problem:
                print(f"irae: error: {one_line(problem)}", file=err)
                code = EXIT_SOME_FAILED
        if not quiet:  # before the last collective: once one process exits non-zero, torchrun stops the others
            print(f"{total.line()} by {ctx.world} processes{of}", file=err, flush=True)
    total.exit_code = ctx.worst(code)
    return total


def _total(summaries: list[RestoreSummary]) -> RestoreSummary:
    return RestoreSummary(restored=sum(s.restored for s in summaries), skipped=sum(s.skipped for s in summaries),
                          failed=sum(s.failed for s in summaries), seconds=max(s.seconds for s in summaries),
                          megapixels=sum(s.megapixels for s in summaries),
                          exit_code=max(s.exit_code for s in summaries), copied=sum(s.copied for s in summaries),
                          routes={k: sum(s.routes.get(k, 0) for s in summaries)
                                  for k in sorted({k for s in summaries for k in s.routes})})
