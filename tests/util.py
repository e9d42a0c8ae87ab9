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


def randomised(module, seed: int = 0, scale: float = 0.1):
    """Random values added to every parameter, in place: a module at rest (zero couplings, unit ActNorm,
    a zero-initialised level input) inverts trivially and hides what a test means to see."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def whole_step_graph_breaks(trainer) -> int:
    """Dynamo's graph breaks over a Trainer's whole training step, called with and without the
    inverse-gain probe (backend 'eager': the breaks are dynamo's, whatever compiles the graph after it).
    The trainer must have taken one eager step (ActNorm's initialisation, Adam's state)."""
    import torch
    import torch._dynamo

    from irae_cli.train.compiled import graph_breaks, run_whole_step
    from irae_cli.train.loss import probe_direction

    t = trainer
    torch._dynamo.reset()
    t.train_step.take_adam_state()
    fn = torch.compile(t.train_step.__call__, fullgraph=True, backend="eager", dynamic=False)
    before = graph_breaks()
    for probe in (True, False):
        inp, clean = t.degrader(t.sampler.sample(t.config.batch_size))
        d = probe_direction(inp.shape, t.data_gen, inp.device) if probe else None
        t.train_step.lr.fill_(1e-3)
        t.train_step.ema_weight.fill_(0.01)
        loss = run_whole_step(fn, torch.device("cpu"), inp, clean, None, t.degrader.last_level, d)
        assert torch.isfinite(loss)
    return graph_breaks() - before
