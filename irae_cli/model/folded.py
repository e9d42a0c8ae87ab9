"""The restore direction of a trained IRAE, folded for speed: fewer, larger kernels.

Training needs the flows' factored form (ActNorm, an orthogonal 1x1 convolution
built from a skew matrix, coupling nets with ActNorms inside).  Restoring needs
only ``D^-1(E(y))`` with fixed weights, and most of the factors are affine maps
that merge with their neighbours:

* an encoder step's ActNorm and 1x1 convolution are one 1x1 convolution with a
  bias; a decoder step, run inverted, gets the same from its inverse 1x1
  convolution (the transpose) and inverse ActNorm;
* each coupling net's two ActNorms fold into the convolutions before them;
* the coupling net's output channels are reordered so shift and scale are two
  contiguous halves, with the scale bound's ``1/c`` folded into the weights.

What is left per step is four convolutions, two ReLUs and one fused
multiply-add, which ``torch.compile`` turns into a handful of kernels.  Every
weight is computed in float64 and stored in float32, so the folded model
restores what the factored one does to fp32 rounding (the tests hold it to
that).  It has no inverse: the clean -> degraded direction and every
invertibility figure use the factored model.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .condition import check_level, scaled, with_level
from .flows import AffineCoupling, FlowStep, couple, uncouple
from .irae import IRAE, pad_to_multiple


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.float().contiguous(), requires_grad=False)


class FoldedCoupling(nn.Module):
    """Coupling net with ActNorms folded in; ``forward`` and ``inverse`` of the affine update."""

    def __init__(self, coupling: AffineCoupling) -> None:
        super().__init__()
        net = coupling.net
        if net.spectral:
            raise ValueError("folding spectrally normalised coupling nets is not supported")
        self.half = coupling.half
        self.clamp = coupling.clamp
        w1, b1 = self._fold_norm(net.conv1, net.norm1)
        w2, b2 = self._fold_norm(net.conv2, net.norm2)
        w3, b3 = net.conv3.weight.double(), net.conv3.bias.double()
        # (shift, raw) interleaved as even/odd channels -> two contiguous halves; raw / c pre-divided.
        order = torch.cat([torch.arange(0, w3.shape[0], 2), torch.arange(1, w3.shape[0], 2)])
        w3, b3 = w3[order].clone(), b3[order].clone()
        if self.clamp > 0:
            w3[self.half:] /= self.clamp
            b3[self.half:] /= self.clamp
        self.w1, self.b1 = _param(w1), _param(b1)
        self.w2, self.b2 = _param(w2), _param(b2)
        self.pad2 = w2.shape[-1] // 2  # 0 for the 1x1 middle convolution, 1 for a 3x3 (``mid_kernel``)
        self.w3, self.b3 = _param(w3), _param(b3)

    @staticmethod
    def _fold_norm(conv: nn.Conv2d, norm) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.exp(norm.log_scale.double()).view(-1)
        w = conv.weight.double() * scale[:, None, None, None]
        b = (conv.bias.double() + norm.bias.double().view(-1)) * scale
        return w, b

    def _shift_logscale(self, x_b: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(F.conv2d(with_level(x_b, cond).to(self.w1.dtype), self.w1, self.b1, padding=1))
        h = F.relu(F.conv2d(h, self.w2, self.b2, padding=self.pad2))
        h = F.conv2d(h, self.w3, self.b3, padding=1).to(x_b.dtype)
        shift, raw = h[:, : self.half], h[:, self.half :]
        if self.clamp <= 0:
            return shift, torch.zeros_like(raw)
        return shift, self.clamp * torch.tanh(raw)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return couple(x, self.half, lambda x_b: self._shift_logscale(x_b, cond))

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return uncouple(z, self.half, lambda x_b: self._shift_logscale(x_b, cond))


class FoldedEncoderStep(nn.Module):
    """ActNorm + 1x1 conv as one biased 1x1 conv, then the coupling (forward direction)."""

    def __init__(self, step: FlowStep) -> None:
        super().__init__()
        w = step.invconv.weight64().detach()
        s = torch.exp(step.actnorm.log_scale.double()).view(-1)
        b = step.actnorm.bias.double().view(-1)
        # W diag(s) (x + b) = (W diag(s)) x + W diag(s) b
        ws = w * s[None, :]
        self.weight = _param(ws[:, :, None, None])
        self.bias = _param(ws @ b)
        self.coupling = FoldedCoupling(step.coupling)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.coupling(F.conv2d(x, self.weight, self.bias), cond)


class FoldedDecoderStep(nn.Module):
    """A decoder step run inverted: the coupling's inverse, then 1x1 conv^-1 + ActNorm^-1 as one conv."""

    def __init__(self, step: FlowStep) -> None:
        super().__init__()
        w_inv = step.invconv.weight64().detach().t()
        s = torch.exp(-step.actnorm.log_scale.double()).view(-1)
        b = step.actnorm.bias.double().view(-1)
        # diag(1/s) W^T z - b
        self.weight = _param((s[:, None] * w_inv)[:, :, None, None])
        self.bias = _param(-b)
        self.coupling = FoldedCoupling(step.coupling)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(self.coupling.inverse(z, cond), self.weight, self.bias)


class FoldedIRAE(nn.Module):
    """``restore(y) = D^-1(E(y))`` of a trained IRAE, folded (see the module docstring)."""

    invertible = False  # no inverse here; use the factored model for the clean -> degraded direction

    def __init__(self, model: IRAE) -> None:
        super().__init__()
        if not model.is_initialized:
            raise ValueError("fold a trained (initialised) model, not a fresh one")
        self.config = model.config
        self.size_multiple = model.size_multiple
        self.encoder = nn.ModuleList(nn.ModuleList(FoldedEncoderStep(s) for s in level)
                                     for level in model.encoder.levels)
        self.decoder = nn.ModuleList(nn.ModuleList(FoldedDecoderStep(s) for s in reversed(level))
                                     for level in model.decoder.levels)

    def _encode(self, x: torch.Tensor, cond: torch.Tensor | None) -> list[torch.Tensor]:
        latents = []
        last = len(self.encoder) - 1
        for i, steps in enumerate(self.encoder):
            x = F.pixel_unshuffle(x, 2)
            for step in steps:
                x = step(x, cond)
            if i < last:
                half = x.shape[1] // 2
                latents.append(x[:, :half])
                x = x[:, half:]
        latents.append(x)
        return latents

    def _decode(self, latents: list[torch.Tensor], cond: torch.Tensor | None) -> torch.Tensor:
        x = latents[-1]
        last = len(self.decoder) - 1
        for i in reversed(range(len(self.decoder))):
            if i < last:
                x = torch.cat([latents[i], x], dim=1)
            for step in self.decoder[i]:
                x = step(x, cond)
            x = F.pixel_shuffle(x, 2)
        return x

    def set_coupling_dtype(self, dtype: torch.dtype) -> "FoldedIRAE":
        """Run only the coupling nets in ``dtype`` (e.g. bf16); the flow arithmetic stays as it is.

        The affine updates and 1x1 convolutions are where the flows' precision lives; the
        coupling nets only propose shifts and scales, so lower precision there costs far less.
        """
        for m in self.modules():
            if isinstance(m, FoldedCoupling):
                for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
                    getattr(m, name).data = getattr(m, name).data.to(dtype)
        return self

    def restore_padded(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` for sizes already a multiple of ``size_multiple``: no padding, no crop (the ONNX graph)."""
        cond = scaled(check_level(self.config.condition, level, y.shape[0]), self.config.condition)
        return self._decode(self._encode(y - 0.5, cond), cond) + 0.5

    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        h, w = y.shape[-2:]
        y, _ = pad_to_multiple(y, self.size_multiple)
        return self.restore_padded(y, level)[..., :h, :w]


def folds(model: nn.Module) -> bool:
    """Whether ``fold`` gives this model a folded form (answered without building it)."""
    return isinstance(model, IRAE) and not model.config.spectral_norm


def fold(model: nn.Module) -> nn.Module:
    """The folded restore form of an IRAE model; any other model is returned as it is."""
    return FoldedIRAE(model).eval() if folds(model) else model
