"""The models a benchmark measures: trained weights or an untrained preset, with what the report says of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import IraeError
from ..model import condition_of, create_model, parameter_count


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    weights: str | None
    sha256: str | None
    arch: str
    task: str | None = None
    task_params: dict = field(default_factory=dict)

    def entry(self) -> dict:
        condition = condition_of(self.model.config)
        return {"weights": self.weights, "sha256": self.sha256, "arch": self.arch,
                "params": parameter_count(self.model), **({"condition": condition} if condition != "none" else {})}


def load_model(weights: str, *, name: str | None = None, task: str | None = None) -> LoadedModel:
    from ..weights import load_weights

    lw = load_weights(weights, device="cpu", expect_task=task)
    # Recorded as given (a shipped name, or the path the user typed): a report must not carry the
    # absolute paths of the machine that made it, and the sha256 beside it identifies the file.
    return LoadedModel(name=name or lw.name, model=lw.model, weights=str(weights), sha256=lw.sha256,
                       arch=lw.model.config.arch, task=lw.task, task_params=lw.task_params)


def preset_model(arch: str, init_images: torch.Tensor | None = None) -> LoadedModel:
    """An untrained preset, its ActNorms initialised on ``init_images`` (for smoke tests and timing)."""
    try:
        model = create_model(arch)
    except ValueError as e:
        raise IraeError(str(e)) from None
    if not model.is_initialized:
        x = init_images if init_images is not None else torch.rand(
            2, model.config.channels, 64, 64, generator=torch.Generator().manual_seed(0))
        model.initialize(x, x)
    return LoadedModel(name=arch, model=model.eval(), weights=None, sha256=None, arch=arch)


def parse_compare(items: list[str]) -> list[tuple[str, str]]:
    """['cnn=B.safetensors', ...] -> [('cnn', 'B.safetensors'), ...]."""
    out = []
    for item in items:
        name, sep, weights = item.partition("=")
        if not sep or not name.strip() or not weights.strip():
            raise IraeError(f"--compare {item!r}: use NAME=WEIGHTS, e.g. --compare cnn=weights/cnn.safetensors")
        out.append((name.strip(), weights.strip()))
    return out
