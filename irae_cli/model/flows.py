"""Glow-style flow blocks that stay invertible in practice, not only on paper.

Each block has ``forward`` (data -> latent) and ``inverse`` (latent -> data).
The published IRAE design has three numerical hazards (see README, "Model
core"); the blocks here avoid each one by construction:

* ActNorm never initialises itself.  ``initialize`` is explicit, runs once and
  its state (``initialized``) lives in the state dict, so loading trained
  weights and calling ``forward`` can never re-initialise them.
* The 1x1 convolution is orthogonal (``Q0 @ matrix_exp(A - A^T)``): its
  condition number is 1 whatever training does, and its inverse is a
  transpose, cached for inference.
* The coupling scale is ``exp(c * tanh(h / c))``, so neither direction can
  multiply or divide by more than ``exp(c)`` per step; this bound is what keeps
  rounding errors from being amplified step after step (the "exploding inverse"
  effect).  Spectral normalisation of the coupling nets is available as an option
  but measured no better (README, "Precision").
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
import torch.nn.functional as F

from .condition import with_level, zero_condition_weights
from .expm import matrix_exp_fixed

# ActNorm's data-dependent scale is clamped: a near-constant channel would
# otherwise get a huge gain, which the inverse turns into a huge error.
ACTNORM_MAX_LOG_SCALE = math.log(20.0)


class ActNorm(nn.Module):
    """Per-channel affine normalisation with explicit, one-time initialisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        if bool(self.initialized):
            raise RuntimeError("ActNorm is already initialised; refusing to overwrite trained state")
        x = x.detach().double()
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3), unbiased=False)
        log_scale = (-torch.log(std.clamp_min(1e-6))).clamp(-ACTNORM_MAX_LOG_SCALE, ACTNORM_MAX_LOG_SCALE)
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(log_scale.view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.bias) * torch.exp(self.log_scale)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Orthogonal 1x1 convolution: W = exp(A - A^T) (``matrix_exp_fixed``: no host sync, so a compiled
    training step can hold it whole).

    A starts random, so W starts as a random rotation (Glow's start).  The
    matrix is built in float64 from A alone, so W^T is its inverse to float64
    precision whatever dtype the model runs in.  Outside autograd the pair (W, W^T) is
    cached and rebuilt only when A changes (tracked by its version counter,
    which optimiser steps and ``load_state_dict`` both bump).
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(channels, channels, generator=generator))
        self._cache: tuple | None = None
        self._step: tuple | None = None  # W in float32 and float64 for one training step (batched_invconv_weights)

    def weight64(self) -> torch.Tensor:
        skew = self.a.double() - self.a.double().t()
        return matrix_exp_fixed(skew)

    def _weights(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._step is not None:
            w = self._step[1] if like.dtype == torch.float64 else self._step[0].to(like.dtype)
            return w, w.t()
        if torch.is_grad_enabled() and self.a.requires_grad:
            w = self.weight64().to(like.dtype)
            return w, w.t()
        # Keyed on the parameter only, not on the input's dtype: under autocast the
        # input dtype alternates, and a dtype-keyed cache would thrash (and make
        # torch.compile recompile on every switch).
        key = (self.a._version, self.a.data_ptr(), self.a.device)
        if self._cache is None or self._cache[0] != key:
            w = self.weight64().detach()
            self._cache = (key, w.float(), w.t().contiguous().float(), w.double(), w.t().contiguous().double())
        if like.dtype == torch.float64:
            return self._cache[3], self._cache[4]
        return self._cache[1].to(like.dtype), self._cache[2].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, _ = self._weights(x)
        return F.conv2d(x, w[:, :, None, None])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        _, w_inv = self._weights(z)
        return F.conv2d(z, w_inv[:, :, None, None])

    @torch.no_grad()
    def condition_number(self) -> float:
        return float(torch.linalg.cond(self.weight64()))


@contextmanager
def batched_invconv_weights(module: nn.Module):
    """For one training step: every 1x1 convolution's weight from one ``matrix_exp`` per channel count.

    A training step meets each weight three times (forward, the inverse-gain probe's inverse pass,
    backward); built per module that is ~100 small matrix exponentials for a 32-step model, each a
    string of tiny kernels -- on a GPU the step becomes bound by the host. Here each group of
    equal-sized matrices goes through one batched call (same values: the squaring count is chosen per
    matrix), and the forward and the probe share it, so does backward. The
    weights live for the ``with`` block only: after an optimiser step they are stale.
    """
    convs = [m for m in module.modules() if isinstance(m, InvConv1x1)]
    groups: dict[tuple, list[InvConv1x1]] = {}
    for conv in convs:
        groups.setdefault((conv.a.shape[0], conv.a.device), []).append(conv)
    try:
        for group in groups.values():
            a = torch.stack([conv.a for conv in group]).double()
            w64 = matrix_exp_fixed(a - a.transpose(1, 2))
            for conv, w32, w in zip(group, w64.float().unbind(0), w64.unbind(0)):
                conv._step = (w32, w)
        yield
    finally:
        for conv in convs:
            conv._step = None


def _sn(conv: nn.Conv2d, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(conv) if enabled else conv


class CouplingNet(nn.Module):
    """3x3 conv -> ActNorm -> ReLU -> kxk conv -> ActNorm -> ReLU -> zero 3x3 conv, k = ``mid_kernel`` (1 or 3).

    ``cond_ch`` more input channels (the level map, last) with zero initial weights."""

    def __init__(self, in_ch: int, out_ch: int, width: int, spectral: bool, cond_ch: int = 0,
                 mid_kernel: int = 1) -> None:
        super().__init__()
        conv1 = nn.Conv2d(in_ch + cond_ch, width, 3, padding=1)
        zero_condition_weights(conv1, cond_ch)
        self.conv1 = _sn(conv1, spectral)
        self.norm1 = ActNorm(width)
        self.conv2 = _sn(nn.Conv2d(width, width, mid_kernel, padding=mid_kernel // 2), spectral)
        self.norm2 = ActNorm(width)
        self.conv3 = nn.Conv2d(width, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)
        self.spectral = spectral
        # Set (not saved) to run this net alone under autocast, its output back in float32: the
        # flow arithmetic around it must stay float32. A context inside forward, unlike hooks that
        # enter and leave it, is one torch.compile can trace.
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, init: bool = False) -> torch.Tensor:
        if self.autocast_dtype is not None and not init:
            with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
                return self._body(x, False).float()
        return self._body(x, init)

    def _body(self, x: torch.Tensor, init: bool) -> torch.Tensor:
        h = self.conv1(x)
        if init:
            self.norm1.initialize(h)
        h = F.relu(self.norm1(h))
        h = self.conv2(h)
        if init:
            self.norm2.initialize(h)
        h = F.relu(self.norm2(h))
        return self.conv3(h)


def couple(x: torch.Tensor, half: int, shift_logscale) -> torch.Tensor:
    """The affine coupling: ``z_a = x_a * exp(log_s) + shift`` with both computed from ``x_b``, which passes."""
    x_a, x_b = x[:, :half], x[:, half:]
    shift, log_s = shift_logscale(x_b)
    return torch.cat([x_a * torch.exp(log_s) + shift, x_b], dim=1)


def uncouple(z: torch.Tensor, half: int, shift_logscale) -> torch.Tensor:
    """``couple``'s exact inverse: ``x_b`` is there unchanged, so the same shift and scale are recomputed."""
    z_a, x_b = z[:, :half], z[:, half:]
    shift, log_s = shift_logscale(x_b)
    return torch.cat([(z_a - shift) * torch.exp(-log_s), x_b], dim=1)


class AffineCoupling(nn.Module):
    """z_a = x_a * exp(c * tanh(h_s / c)) + h_t, with (h_t, h_s) = net(x_b).

    ``clamp`` = 0 gives an additive (volume-preserving) coupling.
    """

    def __init__(self, channels: int, width: int, clamp: float, spectral: bool, cond_ch: int = 0,
                 mid_kernel: int = 1) -> None:
        super().__init__()
        self.half = channels // 2
        self.clamp = float(clamp)
        self.net = CouplingNet(channels - self.half, 2 * self.half, width, spectral, cond_ch, mid_kernel)

    def _shift_logscale(self, x_b: torch.Tensor, init: bool = False,
                        cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(with_level(x_b, cond), init=init)
        shift, raw = h[:, 0::2], h[:, 1::2]
        if self.clamp <= 0:
            return shift, torch.zeros_like(raw)
        return shift, self.clamp * torch.tanh(raw / self.clamp)

    def forward(self, x: torch.Tensor, init: bool = False, cond: torch.Tensor | None = None) -> torch.Tensor:
        return couple(x, self.half, lambda x_b: self._shift_logscale(x_b, init, cond))

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return uncouple(z, self.half, lambda x_b: self._shift_logscale(x_b, False, cond))


class FlowStep(nn.Module):
    """``cond``: the scaled level of each image for the coupling net (model/condition.py), or None (blind)."""

    def __init__(self, channels: int, width: int, clamp: float, spectral: bool, generator=None,
                 cond_ch: int = 0, mid_kernel: int = 1) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels, generator)
        self.coupling = AffineCoupling(channels, width, clamp, spectral, cond_ch, mid_kernel)

    def forward(self, x: torch.Tensor, init: bool = False, cond: torch.Tensor | None = None) -> torch.Tensor:
        if init:
            self.actnorm.initialize(x)
        return self.coupling(self.invconv(self.actnorm(x)), init=init, cond=cond)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(z, cond)))


def squeeze(x: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(x, 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(x, 2)


class MultiLevelFlow(nn.Module):
    """Per level: squeeze -> K steps -> split half the channels off as a latent.

    The last level emits all of its channels.  ``forward`` returns the list of
    latents, finest first; ``inverse`` takes that list back.
    """

    def __init__(self, in_channels: int, width: int, depth: int, levels: int, clamp: float,
                 spectral: bool, generator: torch.Generator | None = None, cond_ch: int = 0,
                 mid_kernel: int = 1) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        ch = in_channels
        for level in range(levels):
            ch *= 4
            self.levels.append(nn.ModuleList(
                FlowStep(ch, width, clamp, spectral, generator, cond_ch, mid_kernel) for _ in range(depth)))
            if level < levels - 1:
                ch -= ch // 2

    def forward(self, x: torch.Tensor, init: bool = False, cond: torch.Tensor | None = None) -> list[torch.Tensor]:
        latents = []
        for i, steps in enumerate(self.levels):
            x = squeeze(x)
            for step in steps:
                x = step(x, init=init, cond=cond)
            if i < len(self.levels) - 1:
                z, x = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
                latents.append(z)
        latents.append(x)
        return latents

    def inverse(self, latents: list[torch.Tensor], cond: torch.Tensor | None = None) -> torch.Tensor:
        x = latents[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                x = torch.cat([latents[i], x], dim=1)
            for step in reversed(self.levels[i]):
                x = step.inverse(x, cond)
            x = unsqueeze(x)
        return x

    def actnorms(self) -> list[ActNorm]:
        return [m for m in self.modules() if isinstance(m, ActNorm)]

    def invconvs(self) -> list[InvConv1x1]:
        return [m for m in self.modules() if isinstance(m, InvConv1x1)]
