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
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..degradations import derive_seed
from ..distributed import init_distributed
from ..distributed import rank_device as train_device
from ..errors import IraeError
from ..progress import Progress, default_echo
from ..tasks import get_task
from . import collectives
from .budget import CALIBRATION_STEPS, TimeBudget
from .compiled import StepCompile
from .checkpoint import load_checkpoint, load_init_weights, restore_generators, restore_optimisation, resumed_model
from .config import Session, TrainConfig, build_config, lr_at, merge_resumed_config
from .data import PatchSampler, load_training_data, replay_warning
from .degrader import Degrader
from .divergence import DivergenceGuard
from .finish import finish
from .loss import SMALL_PROBE, inverse_gain_penalty, low_sigma_weight, training_loss
from .outputs import RunFiles, check_output_space, derived_paths, refuse_foreign_outputs
from .precision import EMA, StepPrecision, compute_dtype
from .runlog import TrainResult, open_log, session_record
from .validation import TrainingValidation, summarize_val

DEFAULT_VAL_EVERY = 2000
DEFAULT_CHECKPOINT_EVERY = 1000


@dataclass
class RunState:
    """How far the run is; step, patches_seen, train_seconds and sessions also go into the checkpoint."""

    step: int = 0
    patches_seen: int = 0
    train_seconds: float = 0.0  # of the earlier sessions
    sessions: int = 1
    lr: float = 0.0  # of the last step
    stopped: str = "completed"
    # the log interval being summed up: the loss stays on the device (no host sync per step)
    loss_sum: torch.Tensor | None = None
    interval_steps: int = 0
    interval_t0: float = 0.0


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
        self._setup_outputs()
        self.compute_dtype = compute_dtype(self.session.dtype, self.device, self.config.arch)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: the autotuned kernels are reused every step
        self._setup_data()
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
        self.ckpt = None
        if self.session.resume:
            self.ckpt = load_checkpoint(Path(self.session.resume))
            meta = self.ckpt["meta"]
            self.config = merge_resumed_config(TrainConfig.from_dict(meta["config"]), self.given, self.note)
            self.run_id = meta["run_id"]
        else:
            self.config = build_config(self.given, self.device)
            self.run_id = uuid.uuid4().hex
            if self.config.steps is None and self.session.minutes is None:
                raise IraeError("give --steps N and/or --minutes M (the run needs an end)")
        from ..model import model_info

        self.task = get_task(self.config.task)
        self.task_params = self.task.default_task_params(model_info(self.config.arch).channels)

    def _setup_outputs(self) -> None:
        s, resumed = self.session, self.ckpt is not None
        out, ckpt_path, log_path = derived_paths(s)
        self.files = RunFiles(out, ckpt_path, log_path, main=self.dist.main, note=self.note)
        self.earlier_log = None
        if self.dist.main:  # only rank 0 writes, so only rank 0 asks (others would race with its first writes)
            self.earlier_log = refuse_foreign_outputs(out, ckpt_path, log_path, overwrite=s.overwrite,
                                             run_id=self.run_id if resumed else None, resume=s.resume)
            check_output_space(out, ckpt_path, log_path, self.config,
                               self.ckpt["meta"]["model_config"] if resumed else None)
        if s.stop_at is not None and s.stop_at < 1:
            raise IraeError(f"--stop-at must be at least 1, not {s.stop_at}")
        self.init_state = self.init_from_record = None
        if resumed:
            self.init_from_record = self.ckpt["meta"].get("init_from")
        elif self.config.init_from:  # checked before the photos load
            self.init_from_record, self.init_state = load_init_weights(self.config)

    def _setup_data(self) -> None:
        s, c, rank = self.session, self.config, self.dist.rank
        source = Path(s.data) if s.data else (Path(self.ckpt["meta"]["data"]["source"]) if self.ckpt else None)
        if source is None:
            raise IraeError("DATA is required: a folder of training photos or a .safetensors pack")
        self.data = load_training_data(source, c.patch, self.device, self.note)
        if self.ckpt and (warning := replay_warning(self.ckpt["meta"]["data"], self.data.description)):
            self.note(warning)
        # Each rank draws its own patches; the sampler, the degrader and the gain probe share data_gen.
        self.data_gen = torch.Generator(device=self.data.device).manual_seed(derive_seed(c.seed, "data", rank))
        host_gen = torch.Generator().manual_seed(derive_seed(c.seed, "host", rank))
        torch.manual_seed(derive_seed(c.seed, "torch"))
        self.sampler = PatchSampler(self.data, c.patch, self.data_gen)
        self.degrader = Degrader(self.task, c, self.device, self.data_gen, host_gen, self.task_params)
        if self.degrader.nvjpeg_problem:
            self.note(f"irae: note: nvJPEG is not usable here ({self.degrader.nvjpeg_problem}); the 4:4:4 JPEG "
                      f"degradation runs in Pillow on the CPU")

    def _setup_model(self) -> None:
        from ..model import create_model

        self.state, self.guard = RunState(), DivergenceGuard()
        if self.ckpt is None:
            self.model = create_model(self.config.arch)
            if self.init_state is not None:
                self.model.load_state_dict(self.init_state)
        else:
            self.model = resumed_model(self.ckpt, self.session.resume)
            self._resume_counters(self.ckpt["meta"])
        self.model.to(self.device).train()
        self.ema = EMA(self.model, self.config.ema) if self.config.ema > 0 else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr_at(self.state.step, self.config),
                                          **({"fused": True} if self.device.type == "cuda" else {}))
        if self.ckpt is not None:
            restore_optimisation(self.ckpt, self.ema, self.optimizer)
            restore_generators(self.ckpt, self.degrader, self.dist.rank, self.dist.world, self.note)
            self._check_resumable()

    def _resume_counters(self, meta: dict) -> None:
        st = self.state
        st.step, st.patches_seen = int(meta["step"]), int(meta["patches_seen"])
        st.train_seconds, st.sessions = float(meta["train_seconds"]), int(meta.get("sessions", 1)) + 1
        self.guard.load_state(meta.get("divergence_guard"))

    def _check_resumable(self) -> None:
        s = self.session
        if self.config.steps is None and s.minutes is None:
            raise IraeError(f"{s.resume}: the run's length was to be set by --minutes; give --minutes or --steps")
        if self.state.step >= (self.config.steps or math.inf):
            raise IraeError(f"{s.resume}: the run already completed its {self.config.steps} steps; "
                            f"give a larger --steps to extend it")

    def _setup_validation(self) -> None:
        s = self.session
        self.validation = None
        if s.val is not None and self.dist.main:
            self.validation = TrainingValidation(Path(s.val), self.task, self.task_params, crop=s.val_crop,
                                                 seed=s.val_seed, config=self.config, device=self.device,
                                                 echo=self.echo)

    def _setup_step(self) -> None:
        from ..model.flows import batched_invconv_weights

        self.precision = StepPrecision(self.model, self.device, self.compute_dtype)
        self.precision.attach()
        self.train_model = self.model  # wrapped in DistributedDataParallel under torchrun
        self.compiled = StepCompile(self.session.compile, self.model, self.note)
        self.compiled.use(self.train_model)
        self.step_weights = batched_invconv_weights if self.precision.invertible else (lambda m: nullcontext())
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
        return finish(self)

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
            loss, diverged = self._loss_and_gradients(inp, clean)
        except torch.OutOfMemoryError:
            if self.dist.active or c.batch_size == 1:
                raise IraeError(f"out of device memory at --batch-size {c.batch_size}"
                                f"{' per process' if self.dist.active else ''}; lower --batch-size or --patch")
            oom = True  # handled below, once the traceback no longer holds the failed step's tensors
        if oom:
            clean_u8 = inp = clean = None
            self._halve_batch()
            return False
        if diverged:
            self.note(self.guard.roll_back(self.model, self.optimizer, self.ema, st.step))
            self.log.setdefault("rollbacks", []).append({"step": st.step, "lr_scale": self.guard.lr_scale})
            return False
        if c.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, c.clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, st.step)
        st.loss_sum += loss.detach()
        st.interval_steps += 1
        st.step += 1
        st.patches_seen += c.batch_size * self.dist.world
        self.reporter.update(completed=st.step, announce=False)
        return True

    def _initialize_once(self, inp: torch.Tensor, clean: torch.Tensor) -> None:
        """The one ActNorm initialisation of a fresh run, from its first batch, in float32 without hooks."""
        if self.ckpt is None and self.state.step == 0 and not self.initialized:
            self.initialized = True
            self.precision.detach()
            if self.dist.main and self.init_state is None:
                self.model.initialize(inp, clean, start=self.config.init_start)
            if self.dist.active:
                collectives.broadcast_module(self.model)
            self.precision.attach()
            if self.ema is not None:
                self.ema = EMA(self.model, self.config.ema)
            if self.dist.active:
                self.train_model = self._ddp()
                self.compiled.use(self.train_model)
        elif self.dist.active and self.train_model is self.model:
            self.train_model = self._ddp()
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

    def _ddp(self) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                       else None)

    def _loss_and_gradients(self, inp: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(loss, diverged); the gradients are left in the parameters unless the loss says it diverged."""
        try:
            return self._loss_and_gradients_once(inp, clean)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - compile errors surface at the first compiled call
            if not self.compiled.fall_back(e, self.train_model):
                raise
            self.log["sessions"][-1]["compiled_at_step"] = None
        return self._loss_and_gradients_once(inp, clean)

    def _loss_and_gradients_once(self, inp: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, bool]:
        c, model = self.config, self.model
        # the 1x1 weights of this step, built once (batched) for forward, probe and backward
        with self.step_weights(model):
            with self.precision.forward():
                restored = self.compiled.forward(inp)
            holes = self.degrader.last_mask if self.task.needs_mask else None
            weight = low_sigma_weight(self.degrader.last_sigma, c.low_sigma_floor) if c.low_sigma_floor else None
            loss = training_loss(self.task.model_output(restored, self.task_params), clean, holes, c.loss, weight)
            objective = loss
            if c.inverse_gain > 0 and self.precision.invertible and self.state.step % c.inverse_gain_every == 0:
                # A fine probe's two inverse passes run in fp32 whatever --dtype: bf16 coupling nets cannot
                # resolve its step, and the loss above keeps their speed.
                fine = c.inverse_probe < SMALL_PROBE
                with self.precision.fp32_coupling_nets() if fine else nullcontext():
                    penalty = inverse_gain_penalty(self.compiled.inverse, restored, inp, c.inverse_gain,
                                                   self.data_gen, c.inverse_probe)
                objective = loss + c.inverse_gain_every * penalty
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
        self.config = dataclasses.replace(self.config, **changes)
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
        wanted = self.compiled.decide(st.step - self.start_step, self.clock(), self._seconds_left)
        if wanted is not None and collectives.rank0_int(int(wanted), self.dist, self.device):
            self.compiled.start()
            self.calib_origin = st.step + 1  # the next step compiles: calibrate after it
            self.log["sessions"][-1]["compiled_at_step"] = st.step

    def _seconds_left(self, per_step: float) -> float:
        """How long the rest of this session would take at ``per_step`` seconds a step."""
        st, c, s = self.state, self.config, self.session
        left = [math.inf]
        if self.budget.seconds is not None:
            left.append(self.budget.seconds - (self.clock() - self.t_start))
        for end in (c.steps, s.stop_at):
            if end is not None:
                left.append((end - st.step) * per_step)
        return min(left)

    def _maybe_calibrate(self) -> None:
        """With --minutes alone: the schedule length from the speed of the first steps, then again at
        fractions of the budget (in one process only: ranks' clocks could disagree on when)."""
        st, c, since = self.state, self.config, self.state.step - self.calib_origin
        if c.steps is None and since in CALIBRATION_STEPS:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            estimated = self.budget.calibrate(st.step, since, c.batch_size * c.patch ** 2)
            if estimated is not None:
                estimated = collectives.rank0_int(estimated, self.dist, self.device)
                self._replace_config(steps=estimated)
                self.note(f"irae: note: --minutes {self.session.minutes:g} alone: the schedule is set to "
                          f"{estimated} steps from the speed of the first ones")
        if not self.dist.active \
                and (estimated := self.budget.recalibrate(st.step, c.steps, self.log_every)) is not None:
            self.note(f"irae: note: the schedule is set again to {estimated} steps (was "
                      f"{self.config.steps}) from the speed of the last ones")
            self._replace_config(steps=estimated)

    def _maybe_log(self, done: bool) -> None:
        st, c, stop_at = self.state, self.config, self.session.stop_at
        if not (st.step % self.log_every == 0 or done or (stop_at is not None and st.step >= stop_at)):
            return
        collectives.mean_over_ranks(st.loss_sum, self.dist)
        mean_loss = float(st.loss_sum.item()) / st.interval_steps  # the one host sync per interval
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
        st.loss_sum.zero_()
        st.interval_steps, st.interval_t0 = 0, self.clock()

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
                "task_params": self.task_params}
        self.files.write_checkpoint(model=self.model, ema=self.ema, optimizer=self.optimizer, rng=rng, meta=meta)


def train(session: Session, given: dict | None = None) -> TrainResult:
    """Run (or resume) one training; ``given`` holds the TrainConfig fields the user set explicitly."""
    return Trainer(session, given).run()
