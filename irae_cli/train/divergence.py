"""Catch a training run that blows up, roll it back to a good state and go on more gently.

A flow can diverge in one step: a campaign on the CPU (``medium``, lr 1e-3, batch
16) went from an L1 loss of 0.023 to 85 between two log lines at step ~2,300 and
never recovered, wasting the hours after it.  The guard compares each step's
loss with a running mean of the recent ones.  A loss that is not finite or
jumps more than ``factor`` times above it means the parameters have just gone
bad, so the model, the optimiser state and the EMA are restored from the last
snapshot (taken every ``snapshot_every`` good steps, in memory) and the
learning rate is halved for the rest of the run.  After ``max_rollbacks`` the
run stops with an error instead of wandering on.
"""

from __future__ import annotations

import copy
import math

import torch

from ..errors import IraeError

SPIKE_FACTOR = 6.0  # per-batch losses vary ~3x with the drawn sigma / quality / hole size
WARMUP_CHECKS = 50  # steps that only build the running mean
MEAN_DECAY = 0.98
SNAPSHOT_EVERY = 100
MAX_ROLLBACKS = 6


class DivergenceError(IraeError):
    """The run kept diverging; the last checkpoint on disk is from before the last rollback."""


class DivergenceGuard:
    def __init__(self, *, factor: float = SPIKE_FACTOR, snapshot_every: int = SNAPSHOT_EVERY,
                 max_rollbacks: int = MAX_ROLLBACKS) -> None:
        self.factor = factor
        self.snapshot_every = snapshot_every
        self.max_rollbacks = max_rollbacks
        self.mean: float | None = None
        self.checks = 0
        self.lr_scale = 1.0
        self.rollbacks = 0
        self._snapshot: tuple | None = None
        self._since_snapshot = 0

    # -- what a checkpoint keeps (the snapshot itself lives in memory only)
    def state(self) -> dict:
        return {"mean": self.mean, "checks": self.checks, "lr_scale": self.lr_scale, "rollbacks": self.rollbacks}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.mean, self.checks = state.get("mean"), int(state.get("checks", 0))
            self.lr_scale, self.rollbacks = float(state.get("lr_scale", 1.0)), int(state.get("rollbacks", 0))

    def is_bad(self, loss: float) -> bool:
        """True when ``loss`` (of the current parameters) says they have diverged."""
        if not math.isfinite(loss):
            return True
        if self.mean is not None and self.checks >= WARMUP_CHECKS and loss > self.factor * self.mean:
            return True
        self.mean = loss if self.mean is None else MEAN_DECAY * self.mean + (1 - MEAN_DECAY) * loss
        self.checks += 1
        return False

    def is_bad_interval(self, mean: float, worst: float, steps: int) -> bool:
        """``is_bad`` for ``steps`` steps it did not see one by one (a compiled step reads no value on the
        host): from their mean and their worst loss, read once per log interval."""
        if not (math.isfinite(mean) and math.isfinite(worst)):
            return True
        if self.mean is not None and self.checks >= WARMUP_CHECKS and worst > self.factor * self.mean:
            return True
        kept = MEAN_DECAY ** steps
        self.mean = mean if self.mean is None else kept * self.mean + (1 - kept) * mean
        self.checks += steps
        return False

    def interval_diverged(self, mean: float, worst: float, steps: int, loss: str, snapshot_of: tuple) -> bool:
        """The check of a log interval's compiled steps: True when they diverged (the caller rolls back),
        else the parameters of ``snapshot_of`` (model, optimiser, EMA) are verified for a snapshot."""
        # the guard's factor is for error sizes; a squared error spreads twice as far
        root = (lambda v: math.sqrt(v) if v >= 0 else v) if loss == "l2" else float
        if self.is_bad_interval(root(mean), root(worst), steps):
            return True
        self.after_good_check(*snapshot_of, steps=steps)
        return False

    def after_good_check(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema,
                         steps: int = 1) -> None:
        """Snapshot the (just verified) parameters every ``snapshot_every`` good steps."""
        if self._snapshot is not None and self._since_snapshot < self.snapshot_every:
            self._since_snapshot += steps
            return
        self._snapshot = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            copy.deepcopy(optimizer.state_dict()),
            None if ema is None else {k: v.clone() for k, v in ema.state_dict().items()},
            self.mean,
        )
        self._since_snapshot = 1

    def roll_back(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema, step: int) -> str:
        """Restore the last snapshot and halve the learning rate; returns a one-line note."""
        if self._snapshot is None:
            raise DivergenceError(f"training diverged at step {step} before any good state was kept")
        self.rollbacks += 1
        if self.rollbacks > self.max_rollbacks:
            raise DivergenceError(f"training diverged {self.rollbacks} times (last at step {step}) even with the "
                                  f"learning rate cut to {self.lr_scale:g}x")
        params, opt_state, ema_state, mean = self._snapshot
        model.load_state_dict(params)
        optimizer.load_state_dict(copy.deepcopy(opt_state))
        if ema is not None and ema_state is not None:
            ema.load_state_dict(ema_state)
        self.mean = mean
        self.lr_scale *= 0.5
        return (f"irae: warning: the loss jumped at step {step} (diverging); rolled back to the state of up to "
                f"{self.snapshot_every} steps earlier, learning rate now {self.lr_scale:g}x")
