"""``--compile`` for training: the forward pass (and its backward) and the inverse-gain probe under
``torch.compile``, switched on a few steps into the session once the run has shown it will repay it.

Measured on this project's CPU (one thread, ``medium``, batch 16 of 64², coupling nets in bf16):
42.9 patches/s compiled against 35.9 eager, after ~90 s of compiling.  The ActNorm initialisation of
a fresh run and the divergence guard's rollbacks stay eager; the updates are the same to rounding.
"""

from __future__ import annotations

from ..defaults import check_compile_mode

# 'auto' compiles when the rest of the session would run longer than this eagerly: compiling costs
# ~1.5 minutes on a CPU and buys ~20 %, so shorter sessions finish sooner without it.
COMPILE_PAYOFF_S = 600.0
TIMED_STEPS = (1, 3)  # the session's eager steps timed for 'auto' (the first includes warm-up)


class StepCompile:
    """When and whether a session's training passes are compiled; ``forward``/``inverse`` are what to call."""

    def __init__(self, mode: str, model, note) -> None:
        self.mode, self.model, self.note = check_compile_mode(mode), model, note
        self.decided = mode == "off"
        self.active = False
        self.forward = None  # set by ``use``: the module the training step calls
        self.inverse = self._eager_inverse()
        self._t0: float | None = None

    def use(self, module) -> None:
        """The (possibly DDP-wrapped) eager module the step calls while nothing is compiled."""
        self.forward = module
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
        self.note("irae: note: training under torch.compile (--compile); the next step compiles it and "
                  "takes a minute or two")

    def _compile(self) -> None:
        from ..inference import compiled

        self.forward = compiled(self.forward)
        if self.model.invertible:
            self.inverse = compiled(self.model.inverse)

    def _eager_inverse(self):
        return self.model.inverse if self.model.invertible else None

    def release(self, eager_module) -> None:
        """Back to ``eager_module`` for good, dropping every compiled graph that holds the one it replaces."""
        import torch._dynamo

        self._to_eager(eager_module)
        torch._dynamo.reset()

    def _to_eager(self, eager_module) -> None:
        self.active = False
        self.forward, self.inverse = eager_module, self._eager_inverse()

    def fall_back(self, error: Exception, eager_module) -> bool:
        """After a failed step: back to eager when compiling caused it (True), else False (re-raise)."""
        if not self.active:
            return False
        self._to_eager(eager_module)
        self.note(f"irae: note: torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                  f"training goes on eagerly")
        return True
