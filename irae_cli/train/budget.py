"""``--minutes``: when a run must stop to leave room for its final validation and save, and, with
``--minutes`` alone, how many steps its schedule should span so that the cosine ends with the budget."""

from __future__ import annotations

import math

CALIBRATION_STEPS = (2, 12)  # with --minutes alone: the steps whose speed sets the schedule length
# ... which is set again from the speed since then at these fractions of the budget: the first steps
# can be far slower than the rest (autotuning, other runs starting beside this one on a shared GPU),
# and a schedule that ends at half the budget wastes the other half.  Late points too: a job beside
# this one that ends after half the budget speeds it up, and the schedule would end with a third of
# the budget left (one CPU training run ended at 64 of its 110 minutes).  A late
# re-estimate moves the cosine's end, a small step in the learning rate where it is already low.
RECALIBRATE_AT = (0.1, 0.25, 0.5, 0.75, 0.9)


class TimeBudget:
    """The time left, measured on ``clock`` from ``t_start`` (the start of the command, data loading
    included); ``val_pixels`` is what the final validation scores (None: no validation)."""

    def __init__(self, minutes: float | None, t_start: float, clock, val_pixels: int | None) -> None:
        self.seconds = minutes * 60 if minutes else None
        self.t_start, self.clock, self.val_pixels = t_start, clock, val_pixels
        self.save_seconds = 1.0  # kept back for the final save: twice the last checkpoint's time
        self.last_val_seconds: float | None = None
        self.pixels_per_s = 0.0  # training speed over the last log interval
        self._calib_t0: float | None = None  # clock at CALIBRATION_STEPS[0]
        self._pending: list[float] = []  # fractions of the budget still to re-estimate the schedule at
        self._since_step, self._since_t = 0, 0.0  # the last estimate's step and clock

    def reserve(self, pixels_per_s: float) -> float:
        """Seconds kept back for the final validation and save."""
        if self.val_pixels is None or pixels_per_s <= 0:  # no speed measured yet: nothing to base a guess on
            return self.save_seconds
        if self.last_val_seconds is not None:
            return self.last_val_seconds + self.save_seconds
        # before the first validation: inference ~ a third of a training step per pixel
        return self.save_seconds + (self.val_pixels / max(pixels_per_s, 1.0)) / 3

    def spent(self) -> bool:
        return self.clock() - self.t_start + self.reserve(self.pixels_per_s) >= self.seconds

    def seconds_left(self, per_step: float, step: int, ends) -> float:
        """How long the rest of the session would take at ``per_step`` seconds a step: to the budget's end
        or the first of ``ends`` (step numbers, None for none), whichever comes first."""
        left = [math.inf] + [(end - step) * per_step for end in ends if end is not None]
        if self.seconds is not None:
            left.append(self.seconds - (self.clock() - self.t_start))
        return min(left)

    def steps_that_fit(self, per_step: float, pixels_per_s: float) -> int:
        """Steps of ``per_step`` seconds left in the budget (3 % spare, final validation reserved)."""
        left = self.seconds - (self.clock() - self.t_start) - self.reserve(pixels_per_s)
        return max(1, int(0.97 * left / per_step))

    def calibrate(self, step: int, since_start: int, batch_pixels: int) -> int | None:
        """At the CALIBRATION_STEPS of this session (``since_start``): the first schedule length, or None."""
        if since_start == CALIBRATION_STEPS[0]:
            self._calib_t0 = self.clock()
            return None
        if since_start != CALIBRATION_STEPS[1] or self._calib_t0 is None:
            return None
        per_step = (self.clock() - self._calib_t0) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
        estimated = step + self.steps_that_fit(per_step, batch_pixels / per_step)
        self._pending = list(RECALIBRATE_AT)
        self._since_step, self._since_t = step, self.clock()
        return estimated

    def new_schedule(self, step: int, since_start: int, steps: int | None, batch_pixels: int, log_every: int,
                     agree, again: bool = True) -> int | None:
        """With --minutes alone, after each step: a new schedule length or None.  The first comes from
        ``calibrate`` (made the same on every rank by ``agree``), later ones from ``recalibrate`` when
        ``again`` (in one process only: ranks' clocks could disagree on when)."""
        if steps is None:
            estimated = self.calibrate(step, since_start, batch_pixels)
            return None if estimated is None else agree(estimated)
        return self.recalibrate(step, steps, log_every) if again else None

    def recalibrate(self, step: int, steps: int, log_every: int) -> int | None:
        """At the RECALIBRATE_AT fractions of the budget (checked at log steps): a new schedule length from
        the speed since the last estimate, or None when it is due later or within 2 % of ``steps``."""
        if not self._pending or step <= self._since_step:
            return None
        if not (step >= steps or (step % log_every == 0
                                  and self.clock() - self.t_start >= self._pending[0] * self.seconds)):
            return None
        now = self.clock()
        self._pending = [f for f in self._pending[1:] if now - self.t_start < f * self.seconds]
        per_step = (now - self._since_t) / (step - self._since_step)
        estimated = step + self.steps_that_fit(per_step, self.pixels_per_s)
        self._since_step, self._since_t = step, now
        return estimated if abs(estimated - steps) > 0.02 * steps else None
