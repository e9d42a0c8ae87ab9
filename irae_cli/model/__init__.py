"""Model registry: one ``create_model`` entry point, presets by name (timm-style).

Pure torch: nothing in this package reads or writes files.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .cnn import ResidualCNN
from .condition import condition_of, conditioned, level_args
from .config import CNNConfig, IRAEConfig, ModelInfo, config_from_dict, config_to_json
from .irae import IRAE, widen_for_condition

PRESETS = {
    # The paper's denoising model: width 64, K = 16, 2 levels (~1.31 M parameters).
    "paper-denoise": IRAEConfig(width=64, depth=16, levels=2),
    # The paper's inpainting model: width 64, K = 8, 3 levels.
    "paper-inpaint": IRAEConfig(width=64, depth=8, levels=3),
    # Small enough to train for a few hundred steps on a laptop CPU in seconds.
    "tiny": IRAEConfig(width=16, depth=2, levels=2),
    # Trains in minutes on a laptop CPU: the preset of the CPU-trained interim weights.
    "small": IRAEConfig(width=32, depth=4, levels=2),
    # Between small and paper-denoise (~3x small's work per pixel, ~1/3 of the paper's).
    "medium": IRAEConfig(width=48, depth=8, levels=2),
    # The coupling net's shape at medium's cost (docs/model.md, "Shape at equal cost"), for an A/B from
    # scratch. medium-rf: a 3x3 middle conv (7x7 receptive field per coupling net), width 27 to pay for it:
    # 60,201 MACs per pixel, medium's 59,328 + 1.5 %.
    "medium-rf": IRAEConfig(width=27, depth=8, levels=2, mid_kernel=3),
    # medium-l3: a third level at medium's K = 8, width 42 to pay for it: 58,617 MACs per pixel, medium - 1.2 %.
    "medium-l3": IRAEConfig(width=42, depth=8, levels=3),
    # Three levels give holes a larger receptive field, as paper-inpaint does.
    "small-inpaint": IRAEConfig(width=32, depth=4, levels=3),
    "medium-inpaint": IRAEConfig(width=48, depth=8, levels=3),
    # small-inpaint that also sees the mask (a 4th channel beside the pre-filled image).
    "small-inpaint-mask": IRAEConfig(channels=4, width=32, depth=4, levels=3),
    # Non-invertible comparator with at least paper-denoise's parameter count.
    "cnn": CNNConfig(width=96, depth=18),
    "cnn-medium": CNNConfig(width=64, depth=15),  # >= medium's parameter count
    "cnn-small": CNNConfig(width=64, depth=6),  # >= small's parameter count
    "cnn-tiny": CNNConfig(width=16, depth=5),
}

BUILDERS = {IRAEConfig: IRAE, CNNConfig: ResidualCNN}


def list_models() -> list[str]:
    return sorted(PRESETS)


def resolve_config(name_or_config, **overrides):
    """A preset name, a config dataclass or a config dict -> config dataclass."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown model {name_or_config!r}; known: {', '.join(list_models())}")
        config = PRESETS[name_or_config]
    elif isinstance(name_or_config, dict):
        config = config_from_dict(name_or_config)
    else:
        config = name_or_config
    return dataclasses.replace(config, **overrides) if overrides else config


def create_model(name_or_config, **overrides) -> nn.Module:
    config = resolve_config(name_or_config, **overrides)
    return BUILDERS[type(config)](config)


def model_info(name_or_config) -> ModelInfo:
    """Capabilities of a preset, config or config dict (no model is built)."""
    return ModelInfo.of(resolve_config(name_or_config))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["IRAE", "ResidualCNN", "IRAEConfig", "CNNConfig", "PRESETS", "create_model", "list_models",
           "resolve_config", "parameter_count", "ModelInfo", "model_info", "config_to_json", "config_from_dict",
           "condition_of", "conditioned", "level_args", "widen_for_condition"]
