"""The classical rows of a quality benchmark, in this process or in worker processes.

CBM3D needs a few CPU-minutes per megapixel and uses one core, while the
networks restore the same image in a second or two; scoring a folder against
it would take hours on one core of a many-core machine.  With ``workers`` > 1
each (method, level) of the next few units is handed to a pool of worker
processes (bm3d is not safe to call from several threads) while this process
runs the networks, and the results come back in order: the report is the same
for any ``workers``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterable, Iterator

import torch

from ..classical import METHODS
from ..errors import IraeError
from .units import Unit

AUTO_CAP = 8  # each worker holds its own torch (~300 MB)


def workers_for(value: int) -> int:
    """``--workers``: 0 = auto (one per core but one, up to 8), 1 = in this process, N = N processes."""
    if value < 0:
        raise IraeError(f"--workers must be 0 (auto) or more, not {value}")
    return value or max(1, min(AUTO_CAP, (os.cpu_count() or 1) - 1))


def _run(name: str, x: torch.Tensor, params: dict, mask: torch.Tensor | None) -> torch.Tensor:
    torch.set_num_threads(1)
    return next(m for m in METHODS if m.name == name).run(x, params, mask)


def _one_unit(methods: list, unit: Unit, submit) -> dict[str, list]:
    return {m.name: [submit(m, unit.degraded[i], unit.params[i], unit.masks[i] if unit.masks is not None else None)
                     for i in range(len(unit.levels))] for m in methods}


class ClassicalRows:
    """``with ClassicalRows(methods, workers) as rows: for unit, outputs in rows.run(units): ...``

    ``outputs`` maps each method's name to its (L, C, H, W) result for the unit.
    """

    def __init__(self, methods: list, workers: int = 1):
        self.methods = methods
        self.pool = None
        if workers > 1 and methods:
            # spawn: a forked copy of a process that has started torch's thread pools can hang
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.ahead = workers + 1  # units in flight: enough to keep every worker busy across unit boundaries

    def __enter__(self) -> "ClassicalRows":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def run(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, dict[str, torch.Tensor]]]:
        if self.pool is None:
            for unit in units:
                done = _one_unit(self.methods, unit, lambda m, *a: m.run(*a))
                yield unit, {name: torch.stack(parts) for name, parts in done.items()}
            return
        pending: deque[tuple[Unit, dict[str, list[Future]]]] = deque()
        submit = lambda m, *a: self.pool.submit(_run, m.name, *a)  # noqa: E731
        for unit in units:
            pending.append((unit, _one_unit(self.methods, unit, submit)))
            if len(pending) >= self.ahead:
                yield _collected(*pending.popleft())
        while pending:
            yield _collected(*pending.popleft())


def _collected(unit: Unit, futures: dict[str, list[Future]]) -> tuple[Unit, dict[str, torch.Tensor]]:
    return unit, {name: torch.stack([f.result() for f in parts]) for name, parts in futures.items()}
