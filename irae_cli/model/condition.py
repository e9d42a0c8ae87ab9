"""Conditioning the coupling nets on the degradation level (``IRAEConfig.condition``).

A blind model has to read the degradation's strength off the image in every coupling net.  Conditioned,
each coupling net gets one more input channel to its first convolution: a constant map of the image's
level divided by its scale (``LEVEL_SCALES``), appended after the half ``x_b`` it computes the shift and
scale from.  The level is the noise sigma on the 0-255 scale for a denoiser (``condition="sigma"``), the
JPEG quality 1-100 for a JPEG model (``condition="quality"``: restore reads it from the file's
quantisation tables).  The map depends on the sample only, never on the halves a coupling
transforms, so each coupling keeps its exact inverse: the inverse sees the same ``x_b`` and the same map.
The restore direction ``D^-1(E(y; s); s)`` and the degrade direction are therefore both bijections for a
given level ``s``.

The map's weights start at zero, so a conditioned model computes what the blind one does until training
moves them: ``widen_for_condition`` turns blind weights into conditioned ones that way.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CONDITIONS, IRAEConfig

# sigma / 50: the usual 0-50 range of noise levels maps onto 0-1, the scale of the image halves beside it;
# quality / 100 does the same for JPEG qualities.
SIGMA_SCALE = 50.0
SIGMA_MAX = 255.0  # a level is a sigma on the 0-255 scale
LEVEL_SCALES = {"sigma": SIGMA_SCALE, "quality": 100.0}
# A level where none is known and the figure does not depend on it much (timing, the round-trip check on
# photos that are not JPEG files): a middling noise level, a middling JPEG quality.
TYPICAL_LEVELS = {"sigma": 25.0, "quality": 30.0}
# What a level is, per condition: what the caller passes (messages, the ONNX graph's description).
LEVEL_MEANINGS = {"sigma": "the noise sigma of each image on the 0-255 scale",
                  "quality": "the JPEG quality (1-100) each image was saved at"}


def condition_channels(condition: str) -> int:
    """The extra input channels each coupling net's first convolution gets."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    return 0 if condition == "none" else 1


def check_level(condition: str, level, batch: int) -> torch.Tensor | None:
    """The level a model of ``condition`` is called with, as a (batch,) tensor (None for a blind model).

    A number or a 0-d tensor stands for every image.  Only shapes are checked, not values: reading values
    would wait for the device, which a compiled training step must not do.
    """
    if condition == "none":
        if level is not None:
            raise ValueError("this model is blind (condition 'none'): it takes no level")
        return None
    if level is None:
        raise ValueError(f"this model is conditioned on the degradation (condition {condition!r}): pass level, "
                         f"{LEVEL_MEANINGS[condition]}, e.g. model(y, level)")
    level = torch.as_tensor(level)
    if level.ndim == 0:
        return level.expand(batch)
    if level.shape != (batch,):
        raise ValueError(f"level must hold one {condition} per image ({batch}), not shape {tuple(level.shape)}")
    return level


def scaled(level: torch.Tensor | None, condition: str) -> torch.Tensor | None:
    """What the coupling nets are given: the checked level divided by its condition's scale (None stays None)."""
    return None if level is None else level / LEVEL_SCALES[condition]


def with_level(x_b: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """``x_b`` with the constant map of ``cond`` (one value per image, already scaled) as its last channel."""
    if cond is None:
        return x_b
    n, _, h, w = x_b.shape
    level_map = cond.to(device=x_b.device, dtype=x_b.dtype).view(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x_b, level_map], dim=1)


def zero_condition_weights(conv: nn.Conv2d, extra: int) -> None:
    """The last ``extra`` input channels of ``conv`` start at zero: the map changes nothing until trained."""
    if extra:
        with torch.no_grad():
            conv.weight[:, -extra:].zero_()


_FIRST_WEIGHT = (".coupling.net.conv1.weight", ".coupling.net.conv1.parametrizations.weight.original")
_FIRST_V = ".coupling.net.conv1.parametrizations.weight.0._v"


def widen_state_dict(state: dict, condition: str = "sigma") -> dict:
    """Blind weights (a state dict) -> the state dict of the same model conditioned on ``condition``.

    Each coupling net's first convolution gets zero weights for the new input channels (appended last,
    as ``with_level`` appends the map); under spectral normalisation its power-iteration vector ``_v``
    (the flattened weight's columns, channel-major) gets the matching zeros, which leaves the normalised
    weight as it was.  Everything else is copied unchanged.
    """
    extra = condition_channels(condition)
    out = {}
    for key, t in state.items():
        if key.endswith(_FIRST_WEIGHT):
            t = torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)
        elif key.endswith(_FIRST_V):
            t = torch.cat([t, t.new_zeros(extra * _taps(state, key))])
        out[key] = t
    return out


def _taps(state: dict, v_key: str) -> int:
    """Kernel taps (kh * kw) of the spectrally normalised convolution whose ``_v`` this is."""
    prefix = v_key[: v_key.index(".parametrizations.")]
    weight = state[f"{prefix}.parametrizations.weight.original"]
    return weight.shape[2] * weight.shape[3]


def conditioned(config) -> bool:
    """Whether a model of ``config`` needs a level (any other config, e.g. the CNN's, is blind)."""
    return isinstance(config, IRAEConfig) and config.condition != "none"


def condition_of(config) -> str:
    """``config``'s condition: "none" for a blind model or any other architecture."""
    return config.condition if isinstance(config, IRAEConfig) else "none"


def restore_levels(config, images: torch.Tensor, given: float | None = None) -> torch.Tensor | None:
    """The (N,) levels a conditioned model restores ``images`` (N, C, H, W) at, on the CPU: ``given``, else
    a sigma-conditioned model's estimate per image; None for a blind model. A JPEG quality is a file's
    (header, else its pixels'): the caller decides it per file and gives it. Every caller asks here."""
    from ..degradations.estimate import estimate_sigma

    condition = condition_of(config)
    if condition == "none":
        return None
    if given is not None:
        return torch.full((images.shape[0],), float(given))
    if condition == "quality":
        raise ValueError("a model conditioned on the JPEG quality needs the quality each image was saved at")
    return estimate_sigma(images.float().cpu()).float()


def stand_in_level(config) -> float | None:
    """The level given to a model by callers with no file to read it from (timing, the round-trip check):
    a typical JPEG quality for a quality-conditioned model, which has no estimate from pixels; None for
    any other (a sigma-conditioned model estimates its level, a blind one takes none)."""
    return TYPICAL_LEVELS["quality"] if condition_of(config) == "quality" else None


def level_args(levels: torch.Tensor | None, device) -> tuple:
    """The trailing arguments of a model call for ``levels`` (N,) on ``device``: none for a blind model
    (``levels`` None), so every caller writes ``model(x, *level_args(levels, device))``."""
    return () if levels is None else (levels.to(device, torch.float32),)
