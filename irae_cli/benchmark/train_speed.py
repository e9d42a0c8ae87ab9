"""``irae benchmark speed --train``: training patches/s of one preset, eager and compiled, in the same run.

Both rows time the same ``TrainStep`` (forward, inverse-gain probe as the run's defaults set it, loss,
backward, clipping, Adam, EMA) on the same batch: uncompiled, then as ``irae train --compile`` compiles it
(CUDA graphs on CUDA, inductor on the CPU).  The eager row is the trainer's eager update less its one
host sync per step (the divergence guard), so on a GPU it flatters eager slightly.  The compiled row
reports the compile time apart, dynamo's graph breaks, and on CUDA the synchronising calls of one step.
"""

from __future__ import annotations

import torch

from ..errors import IraeError


def _setup(arch: str, patch: int, batch_size: int, dtype: str, dev: torch.device, probe: bool):
    """A fresh run's step on random patches: (TrainStep, step arguments)."""
    from ..model import create_model
    from ..tasks import get_task
    from ..train.config import build_config
    from ..train.loss import probe_direction
    from ..inference import LowPrecision
    from ..train.precision import EMA, compute_dtype
    from ..train.step import TrainStep

    c = build_config({"arch": arch, "patch": patch, "batch_size": batch_size, "steps": 1000}, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    clean = torch.rand(batch_size, 3, patch, patch, generator=g, device=dev)
    sigma = torch.full((batch_size,), 25.0, device=dev)
    inp = clean + torch.randn(clean.shape, generator=g, device=dev) * (sigma / 255).view(-1, 1, 1, 1)
    model = create_model(arch).to(dev).train()
    if model.invertible:
        model.initialize(inp, clean)
    precision = LowPrecision(model, dev, compute_dtype(dtype, dev, arch))
    precision.attach()
    optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    task = get_task("denoise")
    step = TrainStep(model, optimizer, EMA(model, c.ema), precision, c, task, task.default_task_params(3))
    step.take_adam_state()
    step.lr.fill_(c.lr * 0.1)
    step.ema_weight.fill_(1e-3)
    probing = probe and c.inverse_gain > 0 and model.invertible
    d = probe_direction(inp.shape, g, dev) if probing else None
    return step, (inp, clean, None, sigma, d), precision.label


def train_speed(*, arch: str, patch: int, batch_size: int, dtype: str, dev: torch.device, steps: int,
                warmup: int, time_calls, summary, compile: bool = True) -> list[dict]:
    """Rows ``train eager`` and (with ``compile``) ``train compiled``: patches/s of one training step.
    ``time_calls(fn, dev, warmup, repeats)`` and ``summary(mode, times, images, megapixels, dev, **extra)``
    are the speed benchmark's own timing rule and row."""

    def row(mode: str, times: list[float], **extra) -> dict:
        out = summary(mode, times, batch_size, batch_size * patch * patch / 1e6, dev, dtype=label, **extra)
        out["patches_per_s"] = batch_size / out["median_s"] if out["median_s"] > 0 else None
        return out

    from ..train.compiled import compile_whole_step, count_host_syncs, graph_breaks, run_timed, run_whole_step

    if patch < 16 or steps < 1:
        raise IraeError("--train: --size (the patch side) must be >= 16 and --repeats >= 1")
    step, args, label = _setup(arch, patch, batch_size, dtype, dev, probe=True)
    rows = [row("train eager", time_calls(lambda: step(*args), dev, warmup, steps))]
    if not compile:
        return rows
    torch._dynamo.reset()
    before = graph_breaks()
    fn = compile_whole_step(step, dev)
    _, compile_s = run_timed(fn, dev, *args)  # compiles
    times = time_calls(lambda: run_whole_step(fn, dev, *args), dev, warmup, steps)
    _, syncs = count_host_syncs(lambda: run_whole_step(fn, dev, *args), dev)
    rows.append(row("train compiled", times, compile_s=round(compile_s, 1),
                     graph_breaks=graph_breaks() - before, host_syncs_per_step=syncs))
    return rows
