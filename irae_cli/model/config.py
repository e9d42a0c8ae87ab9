"""Model configurations: plain dataclasses that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

# What the coupling nets may be told besides the image: nothing (blind), the noise level, or the JPEG
# quality (model/condition.py).
CONDITIONS = ("none", "sigma", "quality")
# The task each level belongs to.
CONDITION_TASKS = {"sigma": "denoise", "quality": "jpeg"}
# The coupling net's middle convolution: 1x1 (the published design) or 3x3 (a 7x7 receptive field per
# coupling net instead of 5x5, for the same MACs at a smaller width; docs/model.md).
MID_KERNELS = (1, 3)


@dataclass(frozen=True)
class IRAEConfig:
    arch: str = "irae"
    channels: int = 3
    width: int = 64
    depth: int = 16  # K flow steps per level
    levels: int = 2
    clamp: float = 0.5  # coupling log-scale bound c; 0 = additive coupling
    spectral_norm: bool = False  # spectral-normalise the coupling nets' hidden convs
    seed: int = 0  # fixes the 1x1 convs' initial rotations
    condition: str = "none"  # "sigma"/"quality": every coupling net also sees that level (model/condition.py)
    mid_kernel: int = 1  # kernel size of the coupling nets' middle convolution (MID_KERNELS)

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown condition {self.condition!r}; known: {', '.join(CONDITIONS)}")
        if type(self.mid_kernel) is not int or self.mid_kernel not in MID_KERNELS:
            raise ValueError(f"mid_kernel must be one of {', '.join(map(str, MID_KERNELS))}, not {self.mid_kernel!r}")


@dataclass(frozen=True)
class CNNConfig:
    """Non-invertible comparator: a colour DnCNN-style residual CNN (no batch norm)."""

    arch: str = "cnn"
    channels: int = 3
    width: int = 96
    depth: int = 18  # conv layers in total
    seed: int = 0


CONFIG_TYPES = {"irae": IRAEConfig, "cnn": CNNConfig}

# Where a model may leave float32 when bf16 or fp16 is asked for (``ModelInfo.low_precision``).
# An IRAE casts only its coupling nets: the flows' own arithmetic (ActNorm, the 1x1 convolutions, the
# affine update) is what the inverse direction amplifies, so it stays float32 -- spectral norm or not.
COUPLING_NETS = "coupling_nets"
WHOLE = "whole"  # a network with no inverse to protect runs under autocast as a whole


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to know about a model, read from its config without building it."""

    size_multiple: int  # height and width are padded to a multiple of this
    invertible: bool  # has an exact inverse (the clean -> degraded direction)
    channels: int  # input (and output) channels: 3, or 4 for an inpainting model that sees its mask
    low_precision: str  # COUPLING_NETS or WHOLE: what runs in bf16/fp16 (restore, train and benchmark alike)
    condition: str = "none"  # "sigma"/"quality": restoring needs that level of each image besides the image

    @classmethod
    def of(cls, config) -> "ModelInfo":
        if isinstance(config, IRAEConfig):
            return cls(size_multiple=2 ** config.levels, invertible=True, channels=config.channels,
                       low_precision=COUPLING_NETS, condition=config.condition)
        if isinstance(config, CNNConfig):
            return cls(size_multiple=1, invertible=False, channels=config.channels, low_precision=WHOLE)
        raise TypeError(f"no model info for {type(config).__name__}")


_IMPLIED = {"condition": "none", "mid_kernel": 1}


def config_to_json(config) -> str:
    d = dataclasses.asdict(config)
    # A field at the value every model had before it existed is left out: the description of such a model
    # stays what it was (its files, and comparisons of descriptions such as --init-from's, are unchanged),
    # and older irae versions still read it. Reading fills the default back in.
    for key, old in _IMPLIED.items():
        if key in d and d[key] == old:
            del d[key]
    return json.dumps(d, sort_keys=True)


def config_from_dict(d: dict):
    arch = d.get("arch")
    if arch not in CONFIG_TYPES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(CONFIG_TYPES)}")
    cls = CONFIG_TYPES[arch]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {arch} config fields: {', '.join(sorted(unknown))}")
    return cls(**d)
