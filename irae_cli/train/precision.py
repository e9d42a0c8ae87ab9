"""Precision of a training step (``--dtype``) and the EMA of the weights.

On CUDA, ``bf16`` (the default where supported) autocasts only the coupling networks of an invertible
model (3x3 conv, ActNorm, ReLU, 1x1 conv, ActNorm, ReLU, 3x3 conv); their output (shift and log-scale)
is cast back to float32.  The flow arithmetic stays float32 with TF32 off: the flows' ActNorms, the
orthogonal 1x1 convolutions, the application of the affine coupling (``x_a * exp(log_s) + t``),
squeeze/split, the loss and the optimiser.  Rounding there is what the inverse direction amplifies.
The non-invertible comparator (``cnn``) is autocast as a whole.  ``fp32`` runs everything in IEEE
float32.  A fine inverse-gain probe (``--inverse-probe`` below 1e-4) runs its inverse passes with the
coupling nets in float32 too (``StepPrecision.fp32_coupling_nets``).  On the CPU ``auto`` gives bf16 only where the CPU computes it natively (AVX-512 BF16 or AMX).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from ..errors import IraeError
from .config import ema_decay_at


def compute_dtype(name: str, device: torch.device, arch: str) -> torch.dtype:
    """``--dtype`` (auto | fp32 | bf16) for a model of preset ``arch``: an IRAE runs only its coupling nets
    in bf16; the flows' own arithmetic stays IEEE fp32 (TF32 off) whatever the dtype."""
    from ..inference import device_and_dtype
    from ..model import model_info

    if name not in ("auto", "fp32", "bf16"):
        raise IraeError(f"--dtype must be auto, fp32 or bf16 for training, not {name!r}")
    _, dtype = device_and_dtype(device, name, coupling_only=model_info(arch).invertible, strict=True)
    return dtype


class _CouplingDtype:
    """Undo handle of ``autocast_coupling_nets`` (``.remove()``, like a hook handle)."""

    def __init__(self, net) -> None:
        self.net = net

    def remove(self) -> None:
        self.net.autocast_dtype = None


def autocast_coupling_nets(model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> list:
    """Run each coupling network of an invertible model under autocast; everything else stays float32.

    The network's output is cast back to float32 before the coupling applies it; the state-dict
    keys are unchanged. Returns handles to ``.remove()`` to undo it.
    """
    from ..model.flows import CouplingNet

    handles = []
    for m in model.modules():
        if isinstance(m, CouplingNet):
            m.autocast_dtype = dtype
            handles.append(_CouplingDtype(m))
    return handles


class StepPrecision:
    """Where a training step leaves float32: the coupling nets of an IRAE, or the whole of a CNN."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.invertible = bool(model.invertible)
        self.handles: list = []

    @property
    def label(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.dtype, str(self.dtype))

    def attach(self) -> None:
        if self.dtype != torch.float32 and self.invertible:
            self.handles = autocast_coupling_nets(self.model, self.device.type, self.dtype)

    def detach(self) -> None:
        """Back to float32 everywhere (the ActNorm initialisation, the end of the run)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def forward(self):
        """The context the forward pass runs in."""
        if self.dtype != torch.float32 and not self.invertible:
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return nullcontext()

    @contextmanager
    def fp32_coupling_nets(self):
        """The coupling nets back in float32 within: a fine inverse-gain probe measures changes of ~1e-5,
        which bf16 (8 bits of mantissa) rounds away."""
        if not self.handles:
            yield
            return
        for h in self.handles:
            h.net.autocast_dtype = None
        try:
            yield
        finally:
            for h in self.handles:
                h.net.autocast_dtype = self.dtype


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
