"""`irae restore` as a library: restore a file or a folder tree with trained weights.

``plan_restore`` (plan.py) maps every input to its output and finds the problems
that must stop a run before any work.  ``restore`` (run.py) runs the plan: reader
threads decode ahead of the model, images of equal size are grouped into batches
for the ``Restorer`` (which tiles large images), and writer threads encode and
rename the results into place (batches.py, items.py).  A bad file costs one line
on stderr and one ``failed`` line in the report (report.py); the run goes on and
ends with exit code 1.  ``--task auto`` routes each file to the JPEG model, the
denoiser or a byte copy (routing.py, auto.py).  Under torchrun, or with ``--shard K/N``, each process runs
its pixel-balanced part of the same plan (scale_out.py).

    options.py    RestoreOptions and the usage checks that need no file system
    plan.py       Job, Plan, plan_restore
    dry_run.py    describe_plan and the --dry-run listing
    restorer.py   the weights in a Restorer
    auto.py       --task auto: route each file, load each task's model on first need
    batches.py    run_plan and _BatchRunner: read ahead, batch by shape, write behind
    items.py      one image: read, nvJPEG batch decode, encode and write
    report.py     RestoreSummary and the Reporter (counts, progress bar, JSONL report)
    scale_out.py  torchrun / --shard: split the plan, agree, join the report parts
    run.py        restore()
"""

from .dry_run import describe_plan
from .options import OUTPUT_FORMATS, RestoreOptions, check_options
from .plan import Job, Plan, plan_restore
from .report import RestoreSummary
from .run import restore

__all__ = ["OUTPUT_FORMATS", "Job", "Plan", "RestoreOptions", "RestoreSummary", "check_options", "describe_plan",
           "plan_restore", "restore"]
