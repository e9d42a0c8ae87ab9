"""--dry-run: the plan as a listing (every input -> output, skips, problems, the batches it would run)."""

from __future__ import annotations

from collections import defaultdict
from typing import TextIO

from ..distributed import Dist
from ..errors import EXIT_OK, EXIT_USAGE, IraeError, one_line
from ..imageio import image_size
from ..routing import AUTO, DENOISE_FROM_SIGMA
from ..weights import default_weights_for
from ..shard import Shard
from .batches import images_per_batch
from .options import RestoreOptions
from .auto import route_file
from .plan import Job, Plan
from .report import RestoreSummary
from .restorer import load_restorer


def describe_plan(plan: Plan, opts: RestoreOptions, weights_label: str) -> list[str]:
    """The --dry-run listing: every input -> output, skips, problems and the batches it would run.

    Under --task auto each line also says the file's route and why: a JPEG's quality is read from its
    header, every other file is decoded to measure its noise.
    """
    lines = [f"plan: restore {len(plan.jobs)} image(s), skip {len(plan.skipped)}; task {opts.task}, "
             f"weights {weights_label}"]
    lines += [_job_line(j, plan, opts) for j in plan.jobs]
    lines += [f"  skip {j.source.path} ({j.output} exists)" for j in plan.skipped]
    lines += [f"  exists {j.output} <- {j.source.path}" for j in plan.existing]
    lines += [f"  collision {o} <- {', '.join(str(s.path) for s in srcs)}" for o, srcs in plan.collisions.items()]
    lines += [f"  onto input {j.output}" for j in plan.onto_inputs]
    return lines + _batch_lines(plan, opts)


def _job_line(job: Job, plan: Plan, opts: RestoreOptions) -> str:
    line = f"  {job.source.path} -> {job.output}"
    if opts.task == AUTO:
        route = route_file(job, plan.max_quality)
        if isinstance(route, str):
            line += f"  [unreadable: would be reported as failed: {route}]"
        else:
            if route.task is None and job.output.suffix != job.source.path.suffix:
                line = f"  {job.source.path} -> {job.output.with_suffix(job.source.path.suffix)}"
            line += f"  [{route.describe()}]"
    return line + (" (replaces an empty file)" if job.redo_empty else "")


def _batch_lines(plan: Plan, opts: RestoreOptions) -> list[str]:
    """The batches the run would make, from the image headers (the restore groups by exact shape)."""
    sizes: dict[tuple, int] = defaultdict(int)
    unreadable = 0
    for j in plan.jobs:
        shape = image_size(j.source.path)
        if shape is None:
            unreadable += 1
        else:
            sizes[shape] += 1
    lines = []
    for (c, h, w), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        per = images_per_batch(opts.batch_size, h, w)
        lines.append(f"  batches: {-(-n // per)} of up to {per} x {w}x{h} {'gray' if c == 1 else 'RGB'} "
                     f"({n} image(s))")
    if unreadable:
        lines.append(f"  unreadable header: {unreadable} image(s) (would be reported as failed)")
    return lines


def _weights_label(plan: Plan, opts: RestoreOptions) -> str:
    if opts.task == AUTO:
        names = ", ".join(f"{task} {default_weights_for(task)}" for task in ("jpeg", "denoise"))
        limit = f"JPEG quality <= {plan.max_quality}" if plan.max_quality is not None else "every JPEG"
        return (f"{names}, each loaded only if a file goes to it (routes: {limit} -> jpeg; "
                f"sigma >= {DENOISE_FROM_SIGMA:g} -> denoise; else copied)")
    _, loaded = load_restorer(opts)
    return f"{loaded.path} (sha256 {loaded.sha256[:12]})"


def dry_run(plan: Plan, parts: list[Plan], pixels: dict[int, int], problems: list[str], opts: RestoreOptions,
            shard: Shard | None, ctx: Dist, out: TextIO, err: TextIO) -> RestoreSummary:
    """Process 0 prints the plan (with how it is split); every process exits with the same code."""
    code = EXIT_USAGE if problems else EXIT_OK
    if ctx.main:
        try:
            label = _weights_label(plan, opts)
        except IraeError as e:
            label, problems, code = "(unusable)", [*problems, str(e)], EXIT_USAGE
        lines = describe_plan(plan, opts, label)
        split = [f"  shard {shard}: part {shard.index} of {shard.count}, balanced by pixels"] if shard else []
        if ctx.active:
            split += [f"  process {r} of {ctx.world}: restore {len(p.jobs)} image(s), "
                      f"{sum(pixels.get(id(j), 0) for j in p.jobs) / 1e6:.2f} MP" for r, p in enumerate(parts)]
        for line in lines[:1] + split + lines[1:]:
            print(one_line(line), file=out)
        for p in problems:
            print(f"irae: error: {one_line(p)}", file=err)
    return RestoreSummary(skipped=len(plan.skipped), exit_code=ctx.worst(code))
