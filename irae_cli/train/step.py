"""One training step as a function of tensors: the loss every step computes, and the whole step
(forward, inverse-gain probe, loss, backward, clipping, Adam, EMA) that ``--compile`` hands to
``torch.compile(fullgraph=True)``.

The whole step reads no value on the host: no ``.item()``, no branch on a tensor.  The learning rate and
the EMA weight are device tensors the caller fills (a ``fill_`` with a Python number is a kernel launch
with the number as its argument: no copy, no sync); the gradients come from ``torch.autograd.grad``, so no
``.grad`` outlives the call; Adam is ``torch.optim.adam.adam`` on the optimiser's own state tensors,
``capturable`` (its step counts on the device).  The divergence guard reads the losses later, once per log
interval (``Trainer``).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch

from ..model import conditioned
from .loss import SMALL_PROBE, inverse_gain_penalty, low_sigma_weight, training_loss


class TrainStep:
    """The loss of a step (``objective``), and the whole step (``__call__``) with the updates in place."""

    def __init__(self, model, optimizer, ema, precision, config, task, task_params) -> None:
        from ..model.flows import batched_invconv_weights

        self.model, self.optimizer, self.ema, self.precision = model, optimizer, ema, precision
        self.config, self.task, self.task_params = config, task, task_params
        self.step_weights = batched_invconv_weights if model.invertible else (lambda m: nullcontext())
        self.conditioned = conditioned(model.config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device
        self.lr = torch.zeros((), device=device)
        self.ema_weight = torch.zeros((), device=device)
        self.state: dict[str, list[torch.Tensor]] | None = None  # Adam's, from ``take_adam_state``

    def level(self, level: torch.Tensor | None) -> torch.Tensor | None:
        """What the model is told of each patch: its true level (sigma or JPEG quality, ``Degrader.last_level``)
        when it is conditioned on it, else nothing."""
        if not self.conditioned:
            return None
        if level is None:
            raise ValueError("a conditioned model trains on the task of its level only (sigma: denoise, "
                             "quality: jpeg)")
        return level

    def initialize(self, inp: torch.Tensor, clean: torch.Tensor, level: torch.Tensor | None) -> None:
        """The model's one ActNorm initialisation, from the run's first batch (a blind model takes no level)."""
        level = self.level(level)
        extra = {} if level is None else {"level": level}
        self.model.initialize(inp, clean, start=self.config.init_start, **extra)

    def objective(self, forward, inverse, inp, clean, holes, level, direction, loss_fn=training_loss,
                  penalty_fn=inverse_gain_penalty) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, what to minimise): the loss plus, when the probe's ``direction`` (or the generator to draw
        it from) is given, the inverse-gain penalty.  Call it inside ``step_weights(model)``.

        ``level``: each patch's sigma (denoise) or JPEG quality (jpeg), or None. A conditioned model gets
        it in both directions: the probe measures the gain of the inverse at the level the forward pass
        restored at. The low-sigma weight (denoise only) reads it as the sigma."""
        c = self.config
        told = self.level(level)
        if told is not None:
            forward, inverse = partial(forward, level=told), partial(inverse, level=told)
        with self.precision.autocast():
            restored = forward(inp)
        weight = low_sigma_weight(level, c.low_sigma_floor) if c.low_sigma_floor else None
        loss = loss_fn(self.task.model_output(restored, self.task_params), clean, holes, c.loss, weight)
        if direction is None:
            return loss, loss
        # A fine probe's two inverse passes run in fp32 whatever --dtype: bf16 coupling nets cannot resolve
        # its step, and the loss above keeps their speed.
        fine = c.inverse_probe < SMALL_PROBE
        with self.precision.fp32_coupling_nets() if fine else nullcontext():
            penalty = penalty_fn(inverse, restored, inp, c.inverse_gain, direction, c.inverse_probe)
        return loss, loss + c.inverse_gain_every * penalty

    def __call__(self, inp, clean, holes, level, direction) -> torch.Tensor:
        """The whole step on the model, Adam's state and the EMA, in place; the loss (before the update).
        ``direction``: the probe's, drawn by the caller (``probe_direction``), or None on steps without it."""
        model = self.model
        with self.step_weights(model):
            loss, objective = self.objective(model, getattr(model, "inverse", None), inp, clean, holes, level,
                                             direction)
            grads = list(torch.autograd.grad(objective, self.params))
        with torch.no_grad():
            self._clip(grads)
            self._adam(grads)
            if self.ema is not None:
                # the parameters as updated (not the EMA's own detached aliases: the graph must see the update)
                torch._foreach_lerp_(self.ema._ema, [p.detach() for p in model.parameters()], self.ema_weight)
        return loss.detach()

    def _clip(self, grads: list[torch.Tensor]) -> None:
        """``clip_grad_norm_``'s arithmetic on a list of gradients, without its branches."""
        if self.config.clip > 0:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, (self.config.clip / (norm + 1e-6)).clamp(max=1.0))

    def _adam(self, grads: list[torch.Tensor]) -> None:
        from torch.optim.adam import adam

        s, (beta1, beta2), weight_decay, eps = self.state, *self.hyper
        # Uncompiled on the CPU (tests, the benchmark's eager row) Adam refuses 'capturable': a CPU number
        # there (reading a CPU tensor is no device sync).
        capturable = torch.compiler.is_compiling() or self.lr.device.type != "cpu"
        adam(self.params, grads, s["exp_avg"], s["exp_avg_sq"], [], s["step"], foreach=True,
             capturable=capturable, amsgrad=False, beta1=beta1, beta2=beta2,
             lr=self.lr if capturable else float(self.lr), weight_decay=weight_decay, eps=eps, maximize=False)

    def take_adam_state(self) -> None:
        """Adam's state as the whole step keeps it: made where the optimiser has not stepped yet, the step
        counts as float32 tensors on the parameters' device; the same tensors for the rest of the run."""
        group = self.optimizer.param_groups[0]
        if len(self.optimizer.param_groups) != 1 or group.get("amsgrad") or group.get("maximize"):
            raise ValueError("the whole-step form supports one plain Adam parameter group")
        # read here, not in the step: a compiled step that read the group would guard on its (changing) lr
        self.hyper = (tuple(group["betas"]), group["weight_decay"], group["eps"])
        state = {"step": [], "exp_avg": [], "exp_avg_sq": []}
        for p in self.params:
            st = self.optimizer.state[p]
            if not st:
                st.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                          exp_avg_sq=torch.zeros_like(p))
            st["step"] = st["step"].to(p.device, torch.float32)
            for k in state:
                state[k].append(st[k])
        self.state = state

    @torch.no_grad()
    def readopt_adam_state(self) -> None:
        """After ``optimizer.load_state_dict`` (a rollback): its values into the tensors the compiled step
        holds, and those tensors back into the optimiser (zeros where the snapshot predates Adam's first
        step: what its state starts from)."""
        for i, p in enumerate(self.params):
            st = self.optimizer.state[p]
            for k, kept in self.state.items():
                kept[i].copy_(st[k]) if k in st else kept[i].zero_()
                st[k] = kept[i]

    def static_tensors(self) -> list[torch.Tensor]:
        """What the step updates in place besides the parameters (for CUDA graphs: fixed addresses)."""
        out = [self.lr, self.ema_weight, *[t for ts in self.state.values() for t in ts]]
        return out + (list(self.ema._ema) if self.ema is not None else [])
