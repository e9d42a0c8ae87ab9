"""``--compile`` for training, switched on a few steps into the session once the run has shown it will
repay it.

In one process the whole step is compiled (``step.TrainStep``: forward, inverse-gain probe, loss,
backward, clipping, Adam, EMA) with ``fullgraph=True``: no graph break, no host sync inside; on CUDA it
is captured in CUDA graphs (``mode="reduce-overhead"``), on the CPU inductor compiles it.  Under torchrun
the forward pass (and its backward) and the probe's inverse are compiled instead, around DDP's hooks.
The ActNorm initialisation of a fresh run and the divergence guard's rollbacks stay eager; the updates
are the same to rounding.
"""

from __future__ import annotations

import time
import warnings

import torch

from ..defaults import check_compile_mode

# 'auto' compiles when the rest of the session would run longer than this eagerly: compiling the whole
# step costs minutes on a CPU (docs/performance.md), so shorter sessions finish sooner without it.
COMPILE_PAYOFF_S = 600.0
TIMED_STEPS = (1, 3)  # the session's eager steps timed for 'auto' (the first includes warm-up)
SYNC_COUNT_CALL = 3  # the compiled call whose host syncs are counted (the first ones compile and warm up)


def graph_breaks() -> int:
    """Graph breaks dynamo has counted in this process."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def count_host_syncs(fn, device: torch.device):
    """(fn(), the synchronising CUDA calls it made); the count is None off CUDA (nothing to count)."""
    if device.type != "cuda":
        return fn(), None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in seen)


def compile_whole_step(step, device: torch.device):
    """``torch.compile`` of a ``TrainStep``'s call: CUDA graphs on CUDA, inductor on the CPU."""
    from ..inference import compiled

    if device.type == "cuda":
        for t in step.static_tensors():
            torch._dynamo.mark_static_address(t)
    mode = "reduce-overhead" if device.type == "cuda" else None
    return compiled(step.__call__, dynamic=False, fullgraph=True, mode=mode)


def run_whole_step(fn, device: torch.device, *args) -> torch.Tensor:
    """One call of the compiled step; autograd is traced into its graph (``torch.autograd.grad``)."""
    import torch._dynamo

    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        return fn(*args)


def run_timed(fn, device: torch.device, *args) -> tuple[torch.Tensor, float]:
    """``run_whole_step`` and its wall time (synchronised on CUDA): on the first call, what compiling cost."""
    t0 = time.perf_counter()
    loss = run_whole_step(fn, device, *args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss, time.perf_counter() - t0


class StepCompile:
    """When and whether a session's training is compiled, and what to call: ``whole`` (the compiled
    ``TrainStep``, one process) or ``forward``/``inverse`` (the passes, under torchrun)."""

    def __init__(self, mode: str, model, note, step=None) -> None:
        self.mode, self.model, self.note, self.step = check_compile_mode(mode), model, note, step
        self.decided = mode == "off"
        self.active = False
        self.forward = None  # set by ``use``: the module the training step calls
        self.inverse = self._eager_inverse()
        self.whole = None
        self.calls = 0
        self.breaks_before = 0
        self.record: dict = {}  # graph_breaks, host_syncs_per_step (CUDA): for the log and the summary
        self._t0: float | None = None

    def use(self, module) -> None:
        """The (possibly DDP-wrapped) eager module the step calls while nothing is compiled; a wrapped one
        means torchrun: the passes are what gets compiled."""
        self.forward = module
        if module is not self.model:
            self.step = None
        if self.active:
            self._compile()

    def decide(self, since_start: int, now: float, seconds_left) -> bool | None:
        """Called after each step of the session: None until the timed steps are done, then once whether
        to compile (the caller ``start``s it; under torchrun, with rank 0's answer on every rank).

        ``seconds_left(per_step)``: how long the rest of the session would take at ``per_step``
        seconds a step (the budget's or the schedule's end, whichever comes first).
        """
        if self.decided:
            return None
        if since_start == TIMED_STEPS[0]:
            self._t0 = now
            return None
        if since_start < TIMED_STEPS[1] or self._t0 is None:
            return None
        self.decided = True
        per_step = (now - self._t0) / (TIMED_STEPS[1] - TIMED_STEPS[0])
        return self.mode == "on" or seconds_left(per_step) >= COMPILE_PAYOFF_S

    def start(self) -> None:
        self.active = True
        self._compile()
        what = "the whole training step" if self.whole is not None else "the training passes"
        # On a 2-core CPU: ~1.5 minutes for medium; 17 (wall, sharing the cores) for small-inpaint's larger graph.
        self.note(f"irae: note: {what} under torch.compile (--compile); the next step compiles it: minutes "
                  f"on a CPU, more for deeper presets (the log records it as compile_s)")

    def _compile(self) -> None:
        from ..inference import compiled

        self.breaks_before = graph_breaks()
        if self.step is not None:
            self.step.take_adam_state()
            self.whole = compile_whole_step(self.step, self.model_device)
            return
        self.forward = compiled(self.forward)
        if self.model.invertible:
            self.inverse = compiled(self.model.inverse)

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run(self, lr: float, ema_weight: float, *args) -> torch.Tensor:
        """The compiled whole step (``TrainStep.__call__``'s arguments); records the graph breaks after its
        first call and, on CUDA, the host syncs of one warm call."""
        self.step.lr.fill_(lr)
        self.step.ema_weight.fill_(ema_weight)
        device = self.model_device
        self.calls += 1
        if self.calls == 1:  # the call that compiles
            loss, seconds = run_timed(self.whole, device, *args)
            self.record["compile_s"] = round(seconds, 1)
        elif self.calls == SYNC_COUNT_CALL:
            loss, syncs = count_host_syncs(lambda: run_whole_step(self.whole, device, *args), device)
            self.record["host_syncs_per_step"] = syncs
        else:
            loss = run_whole_step(self.whole, device, *args)
        self.record["graph_breaks"] = graph_breaks() - self.breaks_before
        return loss

    def readopt(self) -> None:
        """After a rollback loaded older optimiser state: back into the tensors the compiled step holds."""
        if self.whole is not None:
            self.step.readopt_adam_state()

    def _eager_inverse(self):
        return self.model.inverse if self.model.invertible else None

    def release(self, eager_module) -> None:
        """Back to ``eager_module`` for good, dropping every compiled graph that holds the one it replaces."""
        import torch._dynamo

        self._to_eager(eager_module)
        torch._dynamo.reset()

    def _to_eager(self, eager_module) -> None:
        self.active = False
        self.whole = None
        self.forward, self.inverse = eager_module, self._eager_inverse()

    def fall_back(self, error: Exception, eager_module) -> bool:
        """After a failed step: back to eager when compiling caused it (True), else False (re-raise)."""
        if not self.active:
            return False
        self._to_eager(eager_module)
        self.note(f"irae: note: torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                  f"training goes on eagerly")
        return True
