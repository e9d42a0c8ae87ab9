"""The one place that says what each task means.

A task fixes how a degraded image (and, for inpainting, its mask) becomes the
model's input, how the model's output becomes the result, which shipped
weights are its default, and its training defaults.  ``train``, ``restore``,
``degrade`` and ``benchmark`` all ask here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .degrade import apply_holes
from .errors import IraeError

# Holes are filled with mid-grey before the model sees them; the value is
# stored in every inpainting weights file (task_params["fill"]) and read back.
INPAINT_FILL = 0.5


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    needs_mask: bool = False
    default_arch: str = "paper-denoise"
    # Degradation ranges used by ``irae train`` when none are given.
    train_defaults: dict = field(default_factory=dict)

    def default_task_params(self) -> dict:
        return {"fill": INPAINT_FILL} if self.needs_mask else {}

    def model_input(self, degraded: torch.Tensor, mask: torch.Tensor | None, task_params: dict) -> torch.Tensor:
        if not self.needs_mask:
            return degraded
        if mask is None:
            raise IraeError(f"task {self.name!r} needs a mask (255 = missing)")
        return apply_holes(degraded, mask, float(task_params.get("fill", INPAINT_FILL)))

    def finish(self, restored: torch.Tensor, degraded: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Clamp to [0, 1]; for inpainting keep every known pixel exactly as it was."""
        out = restored.clamp(0, 1)
        if self.needs_mask and mask is not None:
            out = torch.where(mask.to(out.device), out, degraded.to(out.dtype))
        return out


TASKS = {
    "denoise": Task("denoise", "remove Gaussian noise (blind over sigma 0-55 on the 0-255 scale)",
                    train_defaults={"sigma": (0.0, 55.0)}),
    "jpeg": Task("jpeg", "remove JPEG compression artefacts (blind over quality 10-90, 4:2:0)",
                 train_defaults={"quality": (10, 90), "subsampling": "4:2:0"}),
    "inpaint": Task("inpaint", "fill holes given by a mask (255 = missing)", needs_mask=True,
                    default_arch="paper-inpaint",
                    train_defaults={"masks": ("box", "strokes"), "hole_range": (0.05, 0.4)}),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise IraeError(f"unknown task {name!r}; use one of: {', '.join(TASKS)}") from None
