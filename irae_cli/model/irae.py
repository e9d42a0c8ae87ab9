"""IRAE: restore(y) = D^-1(E(y)), a bijection between degraded and clean images."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
import torch.nn.functional as F

from .condition import check_level, condition_channels, scaled, widen_state_dict
from .config import IRAEConfig, ModelInfo
from .flows import MultiLevelFlow


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple (replicate where the side is too short to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


INIT_STARTS = ("data", "identity")


class IRAE(nn.Module):
    """``level``: for a conditioned model, a (B,) tensor of each image's level (model/condition.py): the
    noise sigma on the 0-255 scale (``config.condition`` "sigma") or the JPEG quality ("quality"); a
    blind model takes none."""

    invertible = True

    def __init__(self, config: IRAEConfig) -> None:
        super().__init__()
        self.config = config
        # One seeded generator fixes the 1x1 convs' random rotations, so two
        # models built from the same config are identical before training.
        g = torch.Generator().manual_seed(config.seed)
        kw = dict(width=config.width, depth=config.depth, levels=config.levels,
                  clamp=config.clamp, spectral=config.spectral_norm, generator=g,
                  cond_ch=condition_channels(config.condition), mid_kernel=config.mid_kernel)
        self.encoder = MultiLevelFlow(config.channels, **kw)
        self.decoder = MultiLevelFlow(config.channels, **kw)

    @property
    def size_multiple(self) -> int:
        return ModelInfo.of(self.config).size_multiple

    @property
    def is_initialized(self) -> bool:
        return all(bool(a.initialized) for f in (self.encoder, self.decoder) for a in f.actnorms())

    @torch.no_grad()
    def initialize(self, degraded: torch.Tensor, clean: torch.Tensor, *, start: str = "data",
                   level: torch.Tensor | None = None) -> None:
        """Set every ActNorm from one batch of data, once.

        ``start="data"``: E from degraded, D from clean, each flow with its own random 1x1
        rotations, so the untrained restore is a fixed channel scramble.  ``start="identity"``:
        E from degraded and D an exact copy of E; with zero-initialised couplings
        ``D^-1(E(y)) = y``, so training starts from the input itself (for inpainting: from
        its classical pre-fill) and learns what to change.
        """
        if start not in INIT_STARTS:
            raise ValueError(f"unknown start {start!r}; use one of {', '.join(INIT_STARTS)}")
        if self.is_initialized:
            raise RuntimeError("model is already initialised; initialise only once, before training")
        cond = self._cond(level, degraded)
        self.encoder(self._prepare(degraded)[0], init=True, cond=cond)
        if start == "identity":
            self.decoder.load_state_dict(self.encoder.state_dict())
        else:
            self.decoder(self._prepare(clean)[0], init=True, cond=cond)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, hw = pad_to_multiple(x, self.size_multiple)
        return x - 0.5, hw

    def _cond(self, level, x: torch.Tensor) -> torch.Tensor | None:
        return scaled(check_level(self.config.condition, level, x.shape[0]), self.config.condition)

    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Restore: degraded -> clean."""
        cond = self._cond(level, y)
        y, (h, w) = self._prepare(y)
        return (self.decoder.inverse(self.encoder(y, cond=cond), cond) + 0.5)[..., :h, :w]

    def inverse(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Degrade: clean -> degraded, the exact inverse of ``forward`` (at the same level) on padded sizes."""
        cond = self._cond(level, x)
        x, (h, w) = self._prepare(x)
        return (self.encoder.inverse(self.decoder(x, cond=cond), cond) + 0.5)[..., :h, :w]

    @torch.no_grad()
    def condition_numbers(self) -> list[float]:
        return [c.condition_number() for f in (self.encoder, self.decoder) for c in f.invconvs()]


def widen_for_condition(source, condition: str = "sigma"):
    """A blind IRAE (model) -> a new model conditioned on ``condition`` that computes the same function at
    any level until trained; a state dict -> its widened state dict (``widen_state_dict``)."""
    if isinstance(source, dict):
        return widen_state_dict(source, condition)
    if not isinstance(source, IRAE):
        raise TypeError(f"only an IRAE model can be conditioned, not {type(source).__name__}")
    if source.config.condition != "none":
        raise ValueError(f"the model is already conditioned (condition {source.config.condition!r})")
    widened = IRAE(dataclasses.replace(source.config, condition=condition))
    param = next(source.parameters())
    widened.to(device=param.device, dtype=param.dtype)
    widened.load_state_dict(widen_state_dict(source.state_dict(), condition))
    return widened.train(source.training)
