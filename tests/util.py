"""What many test files share: running the real ``irae`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One thread per run: on a shared 2-core machine, oversubscribed torch threads are many times slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def irae(*args, cwd=None, env=None, timeout: float = 240, prefix=(), python_args=()) -> subprocess.CompletedProcess:
    """``python -m irae_cli ARGS`` of this checkout (whatever the working folder), output captured.

    ``prefix`` goes before the interpreter (``timeout``, ``nice``), ``python_args`` after it (a launcher
    such as ``-m torch.distributed.run ...`` that then runs ``-m irae_cli``); ``env`` adds to the
    environment."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD, "PYTHONPATH": path, **(env or {})}
    return subprocess.run([*prefix, sys.executable, *python_args, "-m", "irae_cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=timeout)
