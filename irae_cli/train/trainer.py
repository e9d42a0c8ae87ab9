"""One run of ``irae train``: the Trainer sets everything up, then steps until a stop reason, then saves
(the saving at the end: ``finish``).

Every clock reading of the run goes through ``Trainer.clock`` (``time.monotonic`` of this module when the
Trainer is made), the budget's included, so that tests can run the budget logic on a fake clock.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import time
from pathlib import Path

import torch

from ..distributed import init_distributed
from ..distributed import rank_device as train_device
from ..environment import device_name
from ..errors import IraeError
from ..inference import LowPrecision
from ..progress import Progress, default_echo
from ..tasks import get_task
from . import collectives
from .budget import CALIBRATION_STEPS, TimeBudget
from .compiled import StepCompile
from .checkpoint import restore_generators, restore_optimisation, resumed_model
from .config import Session, ema_decay_at, lr_at
from .divergence import DivergenceGuard
from .finish import end_process_group, final_model, final_validation, run_result
from .loss import inverse_gain_penalty, probe_direction, training_loss
from .precision import EMA, compute_dtype
from .runlog import RunState, TrainResult, open_log, run_summary, session_record
from .setup import check_resumable, resume_counters, run_config, run_files, training_inputs, validation_record
from .step import TrainStep
from .validation import TrainingValidation, summarize_val

DEFAULT_VAL_EVERY = 2000
DEFAULT_CHECKPOINT_EVERY = 1000


def _free_device_memory(device: torch.device) -> None:
    """Give cached blocks back to the device (after an ``except`` block: the failed step is gone by then)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Trainer:
    """A run (or a resumed one): ``Trainer(session, given).run()``; ``given`` holds the options the user set."""

    def __init__(self, session: Session, given: dict | None = None) -> None:
        self.clock = time.monotonic  # every clock reading of the run, the budget's included
        self.t_start = self.clock()
        self.session, self.given = session, dict(given or {})
        self.echo = session.echo or default_echo
        self._setup_processes()
        self._setup_config()
        self.files, self.earlier_log, self.init_from_record, self.init_state = run_files(
            session, self.config, self.ckpt, self.run_id, self.dist.main, self.note)
        self.compute_dtype = compute_dtype(self.session.dtype, self.device, self.config.arch)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: the autotuned kernels are reused every step
        self.data, self.data_gen, self.sampler, self.degrader = training_inputs(
            session, self.config, self.ckpt, self.device, self.dist.rank, self.task, self.task_params, self.note)
        self._setup_model()
        self._setup_validation()
        self._setup_step()
        self._setup_loop()

    # ------------------------------------------------------------------ setup

    def _setup_processes(self) -> None:
        s = self.session
        self.device = train_device(s.device)
        if self.device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            torch.cuda.set_device(self.device)
        self.dist = init_distributed(self.device)
        self.note = self.echo if self.dist.main else (lambda msg: None)  # notices come from rank 0 only
        if s.out is None:
            raise IraeError("--out is required: the .safetensors file the trained weights go to")
        if s.minutes is not None and not s.minutes > 0:
            raise IraeError(f"--minutes must be positive, not {s.minutes}")

    def _setup_config(self) -> None:
        from ..model import model_info

        self.ckpt, self.config, self.run_id, self.session = run_config(self.session, self.given, self.device,
                                                                      self.note)
        self.task = get_task(self.config.task)
        self.task_params = self.task.default_task_params(model_info(self.config.arch).channels)

    def _setup_model(self) -> None:
        from ..model import create_model

        self.state, self.guard = RunState(), DivergenceGuard()
        if self.ckpt is None:
            self.model = create_model(self.config.model_config())
            if self.init_state is not None:
                self.model.load_state_dict(self.init_state)
        else:
            self.model = resumed_model(self.ckpt, self.session.resume)
            resume_counters(self.state, self.guard, self.ckpt["meta"])
        self.model.to(self.device).train()
        self.ema = EMA(self.model, self.config.ema) if self.config.ema > 0 else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr_at(self.state.step, self.config),
                                          **({"fused": True} if self.device.type == "cuda" else {}))
        if self.ckpt is not None:
            restore_optimisation(self.ckpt, self.ema, self.optimizer)
            restore_generators(self.ckpt, self.degrader, self.dist.rank, self.dist.world, self.note)
            check_resumable(self.session, self.config, self.state.step)

    def _setup_validation(self) -> None:
        s = self.session
        self.validation = None
        if s.val is not None and self.dist.main:
            self.validation = TrainingValidation(Path(s.val), self.task, self.task_params, crop=s.val_crop,
                                                 seed=s.val_seed, config=self.config, device=self.device,
                                                 echo=self.echo)

    def _setup_step(self) -> None:
        self.precision = LowPrecision(self.model, self.device, self.compute_dtype)
        self.precision.attach()
        self.train_model = self.model  # wrapped in DistributedDataParallel under torchrun
        self.train_step = TrainStep(self.model, self.optimizer, self.ema, self.precision, self.config, self.task,
                                    self.task_params)
        self.compiled = StepCompile(self.session.compile, self.model, self.note, self.train_step)
        self.compiled.use(self.train_model)
        self.params = list(self.model.parameters())
        self.log = self.files.log = open_log(self.earlier_log, self.run_id, self.config)  # written by RunFiles
        self.log["sessions"].append(session_record(self.state.step, self.device, self.compute_dtype,
                                                   self.dist.world, self.data.description,
                                                   self.degrader.jpeg_engine))

    def _setup_loop(self) -> None:
        s, c = self.session, self.config
        self.log_every = s.log_every or (max(1, min(100, c.steps // 20)) if c.steps else 50)
        self.val_every = s.val_every if s.val_every is not None else DEFAULT_VAL_EVERY
        self.ckpt_every = s.checkpoint_every if s.checkpoint_every is not None else DEFAULT_CHECKPOINT_EVERY
        self.budget = TimeBudget(s.minutes, self.t_start, self.clock,
                                 self.validation.validator.pixels if self.validation is not None else None)
        self.start_step = self.calib_origin = self.state.step
        self.initialized = False
        self.state.loss_sum = torch.zeros((), device=self.device)
        self.state.loss_max = torch.zeros((), device=self.device)
        self.reporter = Progress("step", c.steps, completed=self.state.step,
                                 fields={"loss": "-", "speed": "-", "val": "-"},
                                 columns=("loss {loss}", "{speed}", "val {val}"), live=s.progress,
                                 quiet=s.quiet or not self.dist.main, transient=False, plain_every=10.0)

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        self.state.interval_t0 = self.t_run = self.clock()
        try:
            while (reason := self._stop_reason()) is None:
                if self._step():
                    self._after_step()
            self.state.stopped = reason
        except KeyboardInterrupt:
            self.state.stopped = "interrupted"
        finally:
            self.reporter.update(completed=self.state.step, total=self.config.steps, force=True)
            self.reporter.close()
            self.degrader.close()
            self.precision.detach()
        if self.state.stopped == "interrupted" and self.state.step == 0 and self.ckpt is None:
            raise KeyboardInterrupt  # nothing trained yet: writing no file beats writing an uninitialised one
        return self.finish()

    def _stop_reason(self) -> str | None:
        st, c, s = self.state, self.config, self.session
        if c.steps is not None and st.step >= c.steps:
            return "completed"
        if s.stop_at is not None and st.step >= s.stop_at:
            return "stop-at"
        # Every session makes at least one step: a fresh run must initialise its model before saving it.
        # Under DDP the ranks agree only at log steps, to keep the collective off most steps.
        if self.budget.seconds is not None and st.step > self.start_step \
                and (not self.dist.active or st.step % self.log_every == 0):
            if collectives.any_rank(self.budget.spent(), self.dist, self.device):
                return "time budget"
        return None

    def _step(self) -> bool:
        """One optimiser step; False when the batch was given up (rolled back, or too big for the device)."""
        st, c = self.state, self.config
        clean_u8 = self.sampler.sample(c.batch_size)
        inp, clean = self.degrader(clean_u8)
        self._initialize_once(inp, clean)
        st.lr = lr_at(st.step, c) * self.guard.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = st.lr
        oom = False
        try:
            loss = self._update(inp, clean)
        except torch.OutOfMemoryError:
            if self.dist.active or c.batch_size == 1:
                raise IraeError(f"out of device memory at --batch-size {c.batch_size}"
                                f"{' per process' if self.dist.active else ''}; lower --batch-size or --patch")
            oom = True  # handled below, once the traceback no longer holds the failed step's tensors
        if oom:
            clean_u8 = inp = clean = None
            self._halve_batch()
            return False
        if loss is None:
            return False
        st.loss_sum += loss.detach()
        st.interval_steps += 1
        st.step += 1
        st.patches_seen += c.batch_size * self.dist.world
        self.reporter.update(completed=st.step, announce=False)
        return True

    def _update(self, inp: torch.Tensor, clean: torch.Tensor) -> torch.Tensor | None:
        """The step's update of the parameters, the optimiser and the EMA; its loss, or None when the
        eager guard found it diverged (rolled back)."""
        try:
            return self._update_once(inp, clean)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - compile errors surface at the first compiled call
            if not self.compiled.fall_back(e, self.train_model):
                raise
            self.log["sessions"][-1]["compiled_at_step"] = None
        return self._update_once(inp, clean)

    def _update_once(self, inp: torch.Tensor, clean: torch.Tensor) -> torch.Tensor | None:
        if self.compiled.whole is not None:
            return self._whole_step(inp, clean)
        loss, diverged = self._loss_and_gradients(inp, clean)
        if diverged:
            self._roll_back()
            return None
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, self.state.step)
        return loss

    def _whole_step(self, inp: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The compiled step; its losses reach the divergence guard at the next log (``_check_interval``)."""
        st, c = self.state, self.config
        direction = probe_direction(inp.shape, self.data_gen, inp.device) if self._probe_now() else None
        ema_weight = 1.0 - ema_decay_at(st.step, c.ema) if self.ema is not None else 0.0
        loss = self.compiled.run(st.lr, ema_weight, inp, clean, self._holes(), self.degrader.last_level, direction)
        torch.maximum(st.loss_max, loss, out=st.loss_max)
        st.unchecked += 1
        return loss

    def _probe_now(self) -> bool:
        c = self.config
        return c.inverse_gain > 0 and self.model.invertible and self.state.step % c.inverse_gain_every == 0

    def _holes(self) -> torch.Tensor | None:
        return self.degrader.last_mask if self.task.needs_mask else None

    def _roll_back(self) -> None:
        st = self.state
        self.note(self.guard.roll_back(self.model, self.optimizer, self.ema, st.step))
        self.compiled.readopt()
        self.log.setdefault("rollbacks", []).append({"step": st.step, "lr_scale": self.guard.lr_scale})

    def _initialize_once(self, inp: torch.Tensor, clean: torch.Tensor) -> None:
        """The one ActNorm initialisation of a fresh run, from its first batch, in float32 without hooks."""
        if self.ckpt is None and self.state.step == 0 and not self.initialized:
            self.initialized = True
            self.precision.detach()
            if self.dist.main and self.init_state is None:
                self.train_step.initialize(inp, clean, self.degrader.last_level)
            if self.dist.active:
                collectives.broadcast_module(self.model)
            self.precision.attach()
            if self.ema is not None:
                self.ema = self.train_step.ema = EMA(self.model, self.config.ema)
            if self.dist.active:
                self.train_model = collectives.wrap_ddp(self.model, self.device)
                self.compiled.use(self.train_model)
        elif self.dist.active and self.train_model is self.model:
            self.train_model = collectives.wrap_ddp(self.model, self.device)
            self.compiled.use(self.train_model)

    def drop_ddp(self) -> None:
        """Free the DistributedDataParallel wrapper while the process group and the interpreter are alive.

        Left to interpreter shutdown, gloo work still held by its reducer can be torn down after the
        group, which aborts the process (SIGABRT) once in a while on a loaded machine.
        """
        if self.train_model is self.model:
            return
        self.train_model = self.model
        self.compiled.release(self.model)
        gc.collect()

    def _loss_and_gradients(self, inp: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(loss, diverged); the gradients are left in the parameters unless the loss says it diverged."""
        model, step = self.model, self.train_step
        # the 1x1 weights of this step, built once (batched) for forward, probe and backward
        with step.step_weights(model):
            loss, objective = step.objective(self.compiled.forward, self.compiled.inverse, inp, clean, self._holes(),
                                             self.degrader.last_level, self.data_gen if self._probe_now() else None,
                                             training_loss, inverse_gain_penalty)
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
        # Checked once the backward pass is queued: the host waits for the device here and not between the
        # passes (IRAE training is bound by the host launching kernels).  A diverged step's gradients are
        # never applied, and the parameters and optimiser state are still the verified ones to snapshot.
        if self._diverged(loss):
            return loss, True
        self.guard.after_good_check(model, self.optimizer, self.ema)
        return loss, False

    def _diverged(self, loss: torch.Tensor) -> bool:
        """The guard's verdict on this step's loss, the same on every rank (one host sync per step)."""
        value = loss.detach().float()
        if self.config.loss == "l2":  # the guard's factor is for error sizes; a squared error spreads twice as far
            value = value.sqrt()
        if self.dist.active:
            value = collectives.mean_over_ranks(value.clone(), self.dist)
        return self.guard.is_bad(float(value.item()))

    def _halve_batch(self) -> None:
        """Out of memory: redo the step with half the batch, kept for the rest of the run (and in the
        checkpoint's config, so that a resume does not fail the same way)."""
        c, st = self.config, self.state
        self.optimizer.zero_grad(set_to_none=True)
        _free_device_memory(self.device)
        halved = c.batch_size // 2
        self.note(f"irae: note: out of device memory at step {st.step} with batch {c.batch_size}; "
                  f"batch halved to {halved} for the rest of the run")
        self.log["sessions"][-1].setdefault("oom_halvings", []).append(
            {"step": st.step, "from": c.batch_size, "to": halved})
        self._replace_config(batch_size=halved)

    def _replace_config(self, **changes) -> None:
        self.config = self.train_step.config = dataclasses.replace(self.config, **changes)
        self.log["config"] = self.config.to_dict()
        if "steps" in changes:
            self.reporter.update(total=self.config.steps, announce=False)

    # ------------------------------------------------------------------ after each step

    def _after_step(self) -> None:
        self._maybe_compile()
        self._maybe_calibrate()
        done = self.config.steps is not None and self.state.step >= self.config.steps
        self._maybe_log(done)
        self._maybe_validate(done)
        self._maybe_checkpoint(done)

    def _maybe_compile(self) -> None:
        """--compile: decided a few steps into the session; the schedule is then timed from the compiled steps."""
        st = self.state
        ends = (self.config.steps, self.session.stop_at)
        wanted = self.compiled.decide(st.step - self.start_step, self.clock(),
                                      lambda per_step: self.budget.seconds_left(per_step, st.step, ends))
        if wanted is not None and collectives.rank0_int(int(wanted), self.dist, self.device):
            self.compiled.start()
            self.calib_origin = st.step + 1  # the next step compiles: calibrate after it
            self.log["sessions"][-1]["compiled_at_step"] = st.step
            if self.compiled.whole is not None:
                self.log["sessions"][-1]["compiled"] = self.compiled.record

    def _maybe_calibrate(self) -> None:
        """With --minutes alone: the schedule length from the speed of the first steps, then again at
        fractions of the budget (``TimeBudget.new_schedule``)."""
        st, c, since = self.state, self.config, self.state.step - self.calib_origin
        if self.device.type == "cuda" and c.steps is None and since in CALIBRATION_STEPS:
            torch.cuda.synchronize(self.device)
        steps = self.budget.new_schedule(st.step, since, c.steps, c.batch_size * c.patch ** 2, self.log_every,
                                         lambda n: collectives.rank0_int(n, self.dist, self.device),
                                         again=not self.dist.active)
        if steps is not None:
            self.note(f"irae: note: --minutes {self.session.minutes:g} alone: the schedule is set to {steps} steps "
                      f"from the speed of the first ones" if c.steps is None else
                      f"irae: note: the schedule is set again to {steps} steps (was {c.steps}) from the speed "
                      f"of the last ones")
            self._replace_config(steps=steps)

    def _maybe_log(self, done: bool) -> None:
        st, c, stop_at = self.state, self.config, self.session.stop_at
        if not (st.step % self.log_every == 0 or done or (stop_at is not None and st.step >= stop_at)):
            return
        collectives.mean_over_ranks(st.loss_sum, self.dist)
        loss_sum, loss_max = torch.stack([st.loss_sum, st.loss_max]).tolist()  # the one host sync per interval
        mean_loss = loss_sum / st.interval_steps
        if st.unchecked and self.guard.interval_diverged(mean_loss, loss_max, st.unchecked, self.config.loss,
                                                         (self.model, self.optimizer, self.ema)):
            self._roll_back()
            self._new_interval()
            return
        now = self.clock()
        speed = st.interval_steps * c.batch_size * self.dist.world / max(now - st.interval_t0, 1e-9)
        self.budget.pixels_per_s = speed * c.patch ** 2
        if not math.isfinite(mean_loss):
            raise IraeError(f"training diverged at step {st.step} (loss {mean_loss}); the last checkpoint "
                            f"{self.files.checkpoint} is intact; lower --lr or --clip and start again")
        self.log["intervals"].append({"step": st.step, "loss": round(mean_loss, 6), "lr": st.lr,
                                      "patches_per_s": round(speed, 1), "elapsed_s": round(now - self.t_start, 2)})
        self.reporter.update(completed=st.step, total=c.steps, loss=f"{mean_loss:.4f}",
                             speed=f"{speed:,.0f} patches/s")
        self.files.write_log()
        self._new_interval()

    def _new_interval(self) -> None:
        st = self.state
        st.loss_sum.zero_()
        st.loss_max.zero_()
        st.interval_steps, st.unchecked, st.interval_t0 = 0, 0, self.clock()

    def _maybe_validate(self, done: bool) -> None:
        st = self.state
        if not self.val_every or st.step % self.val_every or done:
            return
        if self.validation is not None:
            t_val = self.clock()
            scores = self.evaluate()
            self.budget.last_val_seconds = self.clock() - t_val
            self.log["val"].append({"step": st.step, "levels": scores,
                                    "seconds": round(self.budget.last_val_seconds, 2)})
            self.reporter.update(completed=st.step, total=self.config.steps, force=True, val=summarize_val(scores))
            self.files.write_log()
            self.state.interval_t0 += self.clock() - t_val  # validation time is not training speed
        collectives.barrier(self.dist)

    def _maybe_checkpoint(self, done: bool) -> None:
        if not self.ckpt_every or self.state.step % self.ckpt_every or done:
            return
        t_save = self.clock()
        self.write_checkpoint()
        self.budget.save_seconds = max(1.0, 2 * (self.clock() - t_save))
        self.state.interval_t0 += self.clock() - t_save

    # ------------------------------------------------------------------ files

    def finish(self) -> TrainResult:
        """The end: checkpoint, final validation, weights, log; then the failed writes, if any, as one error."""
        st, files, c = self.state, self.files, self.config
        minutes = (st.train_seconds + self.clock() - self.t_run) / 60
        self.write_checkpoint()
        summary = final_val = sha = None
        if self.dist.main:
            final_val = final_validation(self.evaluate, self.clock, self.log["val"], st.step)
            summary = self._summary(final_val, minutes)
            state = self.ema.state_dict() if self.ema is not None else self.model.state_dict()
            sha = files.write_weights(final_model(self.model.config, state), c, self.task_params, summary)
        if self.dist.active:
            end_process_group(self.drop_ddp)
        files.raise_if_any_failed(st.step)
        if st.stopped == "interrupted":
            raise KeyboardInterrupt
        return run_result(files, st, c.steps, minutes, final_val, device_name(self.device), summary, sha)

    def _summary(self, final_val: dict | None, minutes: float) -> dict:
        from ..model import config_to_json

        st, s = self.state, self.session
        return run_summary(
            run_id=self.run_id, config=self.config, model_config=json.loads(config_to_json(self.model.config)),
            data=self.data.description, steps=st.step, patches_seen=st.patches_seen, minutes=minutes,
            device=self.device, dtype=self.precision.label, world=self.dist.world, val=final_val,
            validator=self.validation.validator if self.validation is not None else None, val_seed=s.val_seed,
            val_crop=s.val_crop, stopped=st.stopped, sessions=st.sessions, jpeg_engine=self.degrader.jpeg_engine,
            oom_halvings=self.log["sessions"][-1].get("oom_halvings", []), init_from=self.init_from_record,
            compiled=self.compiled.record or None)

    def evaluate(self) -> dict | None:
        """Validation scores of the weights that would be saved now (the EMA's when on); None without --val."""
        if self.validation is None:
            return None
        return self.validation(self.ema.state_dict() if self.ema is not None else self.model.state_dict())

    def _rng_state(self) -> dict:
        """Generator states; under DDP every rank's, gathered (each rank draws its own patches)."""
        mine = self.degrader.rng_state()
        return {"torch": torch.get_rng_state(), **collectives.gather_states(mine, self.dist)}

    def write_checkpoint(self) -> None:
        """Every rank calls it (the generator states are gathered); rank 0 writes."""
        from ..model import config_to_json

        rng = self._rng_state()  # collective under DDP: every rank takes part
        if not self.dist.main:
            return
        st = self.state
        meta = {"config": self.config.to_dict(), "model_config": json.loads(config_to_json(self.model.config)),
                "step": st.step, "patches_seen": st.patches_seen,
                "train_seconds": st.train_seconds + (self.clock() - self.t_run),
                "run_id": self.run_id, "data": self.data.description, "world_size": self.dist.world,
                "sessions": st.sessions, "divergence_guard": self.guard.state(), "init_from": self.init_from_record,
                "task_params": self.task_params, "validation": validation_record(self.session)}
        self.files.write_checkpoint(model=self.model, ema=self.ema, optimizer=self.optimizer, rng=rng, meta=meta)


def train(session: Session, given: dict | None = None) -> TrainResult:
    """Run (or resume) one training; ``given`` holds the TrainConfig fields the user set explicitly."""
    return Trainer(session, given).run()
