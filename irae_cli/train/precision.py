"""Precision of a training step (``--dtype``) and the EMA of the weights.

On CUDA, ``bf16`` (the default where supported) autocasts only the coupling networks of an IRAE
(3x3 conv, ActNorm, ReLU, 1x1 conv, ActNorm, ReLU, 3x3 conv); their output (shift and log-scale)
is cast back to float32.  The rule is the model's (``ModelInfo.low_precision``), applied by
``inference.LowPrecision`` for training, restore and the benchmarks alike.  The flow arithmetic stays float32 with TF32 off: the flows' ActNorms, the
orthogonal 1x1 convolutions, the application of the affine coupling (``x_a * exp(log_s) + t``),
squeeze/split, the loss and the optimiser.  Rounding there is what the inverse direction amplifies.
The non-invertible comparator (``cnn``) is autocast as a whole.  ``fp32`` runs everything in IEEE
float32.  A fine inverse-gain probe (``--inverse-probe`` below 1e-4) runs its inverse passes with the
coupling nets in float32 too (``LowPrecision.fp32_coupling_nets``).  On the CPU ``auto`` gives bf16
only where the CPU computes it natively (AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import torch

from ..errors import IraeError
from ..inference import casts_coupling_nets, device_and_dtype
from .config import ema_decay_at


def compute_dtype(name: str, device: torch.device, arch: str) -> torch.dtype:
    """``--dtype`` (auto | fp32 | bf16) for a model of preset ``arch``, by the rule restore follows too
    (``inference.LowPrecision``); the flows' own arithmetic stays IEEE fp32 (TF32 off) whatever the dtype."""
    if name not in ("auto", "fp32", "bf16"):
        raise IraeError(f"--dtype must be auto, fp32 or bf16 for training, not {name!r}")
    _, dtype = device_and_dtype(device, name, coupling_only=casts_coupling_nets(arch), strict=True)
    return dtype


class EMA:
    """Exponential moving average of a model's parameters; buffers are copied, not averaged.

    The EMA copy is what is validated and saved.  Buffers (ActNorm ``initialized`` flags,
    spectral-norm vectors) are taken from the model whenever the state is read rather than every
    step: copying a few hundred tiny tensors per step would cost more kernel launches than the
    average itself.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = model
        params = dict(model.named_parameters())
        self.param_names = list(params)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.buffer_names = [k for k in self.state if k not in params]
        self._ema = [self.state[n] for n in self.param_names]
        self._src = [params[n].detach() for n in self.param_names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        if model is not self.model:
            raise ValueError("EMA.update must be given the model it was made from")
        torch._foreach_lerp_(self._ema, self._src, 1.0 - ema_decay_at(step, self.decay))

    @torch.no_grad()
    def state_dict(self) -> dict:
        buffers = dict(self.model.named_buffers())
        for k in self.buffer_names:
            self.state[k].copy_(buffers[k])
        return self.state

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.state.items():
            v.copy_(state[k])
