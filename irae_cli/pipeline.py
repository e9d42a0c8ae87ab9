"""The old import path of the restore pipeline (bench.py still uses it); the code lives in irae_cli/restore/."""

from .restore import (OUTPUT_FORMATS, Job, Plan, RestoreOptions, RestoreSummary, check_options, describe_plan,
                      plan_restore, restore)

__all__ = ["OUTPUT_FORMATS", "Job", "Plan", "RestoreOptions", "RestoreSummary", "check_options", "describe_plan",
           "plan_restore", "restore"]
