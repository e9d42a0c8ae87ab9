"""The one place that says what each task means.

A task fixes how a degraded image (and, for inpainting, its mask) becomes the
model's input, how the model's output becomes the result, which shipped
weights are its default, and its training defaults.  ``train``, ``restore``,
``degrade`` and ``benchmark`` all ask here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from .defaults import DEFAULTS
from .degradations import INPAINT_FILL, apply_holes
from .errors import IraeError

# Holes in a stored holed image are mid-grey (INPAINT_FILL, task_params["fill"]).  Before the
# model sees them they are pre-filled (task_params["prefill"]): "harmonic" solves the smooth Laplace fill
# from the hole's border, so the network only learns what a smooth fill misses; "none" leaves
# the grey, as inpainting weights made before the pre-fill existed expect (they lack the key).
PREFILLS = ("harmonic", "none")
# An inpainting model with one channel more than its images (a 4-channel preset) sees the mask itself
# beside the pre-filled image (task_params["mask_channel"]): the flow maps (image, mask) to (restored,
# mask), still a bijection, and knows where the holes are instead of guessing them from a smooth fill.
MASK_CHANNEL = "mask_channel"


def with_mask_channel(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) images and their masks -> the (N, 4, H, W) input of a mask-channel model (gray as RGB)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return torch.cat([x, mask.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 1, -1, -1)], dim=1)


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    needs_mask: bool = False
    default_arch: str = "paper-denoise"
    # Degradation ranges used by ``irae train`` when none are given.
    train_defaults: dict = field(default_factory=dict)
    # The period of the grid the degradation is laid on (JPEG: 16, its 4:2:0 chroma blocks; 1: none).  A
    # flipped or turned view of the image must keep that grid where the model learnt it, at the origin.
    grid: int = 1

    def default_task_params(self, model_channels: int = 3) -> dict:
        """What a new model of ``model_channels`` input channels is trained (and later run) with."""
        if model_channels not in (3, 4) or (model_channels == 4 and not self.needs_mask):
            raise IraeError(f"a {model_channels}-channel model is not for {self.name}: only inpainting models "
                            f"take a 4th channel (the mask); use a 3-channel model")
        if not self.needs_mask:
            return {}
        params = {"fill": INPAINT_FILL, "prefill": "harmonic"}
        if model_channels == 4:
            params[MASK_CHANNEL] = True
        return params

    def params_for_weights(self, stored: dict | None, model_channels: int = 3) -> dict:
        """Task parameters a weights file runs with: the task's defaults, then what the file says."""
        params = {**self.default_task_params(model_channels), **(stored or {})}
        if self.needs_mask and "prefill" not in (stored or {}):
            params["prefill"] = "none"  # made before the pre-fill existed: trained on grey holes
        return params

    def params_problem(self, params: dict) -> str | None:
        """What is wrong with a weights file's stored ``task_params`` for this task (None: nothing).

        Checked when weights load, so a damaged value is refused once, naming the file, instead of
        failing (or silently changing what is done) on every image later."""
        if self.name == "jpeg" and "max_quality" in params:
            limit = params["max_quality"]
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
                return (f"field 'max_quality' in 'task_params' is {json.dumps(limit)[:40]}; it must be an integer 1-100 "
                        f"(the JPEG quality above which files are kept as they are) or absent")
        return None

    def model_input(self, degraded: torch.Tensor, mask: torch.Tensor | None, task_params: dict) -> torch.Tensor:
        if not self.needs_mask:
            return degraded
        if mask is None:
            raise IraeError(f"task {self.name!r} needs a mask (255 = missing)")
        prefill = task_params.get("prefill", "none")
        if prefill == "harmonic":
            from .fill import harmonic_fill

            x = harmonic_fill(degraded, mask)
        elif prefill == "none":
            x = apply_holes(degraded, mask, float(task_params.get("fill", INPAINT_FILL)))
        else:
            raise IraeError(f"unknown inpainting pre-fill {prefill!r}; this irae knows {', '.join(PREFILLS)}")
        return with_mask_channel(x, mask) if task_params.get(MASK_CHANNEL) else x

    def model_output(self, restored: torch.Tensor, task_params: dict) -> torch.Tensor:
        """The restored image in what the model returns: all of it, or its first three channels when the
        fourth carries the mask."""
        return restored[:, :3] if task_params.get(MASK_CHANNEL) else restored

    def passes_through(self, task_params: dict, source_quality: int | None) -> bool:
        """True for a JPEG above the quality up to which these weights were measured to improve their input
        (``max_quality``, set when they were shipped): such a file is kept as it is, not made worse."""
        limit = task_params.get("max_quality")
        return self.name == "jpeg" and limit is not None and source_quality is not None and source_quality > limit

    def finish(self, restored: torch.Tensor, degraded: torch.Tensor, mask: torch.Tensor | None, *,
               owned: bool = False) -> torch.Tensor:
        """Clamp to [0, 1]; for inpainting keep every known pixel exactly as it was.  ``owned``: nothing else
        uses ``restored``, so it is clamped in place (a whole copy less of a large image)."""
        out = restored.clamp_(0, 1) if owned else restored.clamp(0, 1)
        if self.needs_mask and mask is not None:
            out = torch.where(mask.to(out.device), out, degraded.to(out.dtype))
        return out


_SIGMA = "{:g}-{:g}".format(*DEFAULTS.sigma_range)
_QUALITY = "{}-{}".format(*DEFAULTS.quality_range)

TASKS = {
    "denoise": Task("denoise", f"remove Gaussian noise (blind over sigma {_SIGMA} on the 0-255 scale)",
                    train_defaults={"sigma": DEFAULTS.sigma_range}),
    "jpeg": Task("jpeg", f"remove JPEG compression artefacts (blind over quality {_QUALITY}, {DEFAULTS.subsampling})",
                 train_defaults={"quality": DEFAULTS.quality_range, "subsampling": DEFAULTS.subsampling}, grid=16),
    "inpaint": Task("inpaint", "fill holes given by a mask (255 = missing)", needs_mask=True,
                    default_arch="paper-inpaint",
                    train_defaults={"masks": DEFAULTS.masks, "hole_range": DEFAULTS.hole_range}),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise IraeError(f"unknown task {name!r}; use one of: {', '.join(TASKS)}") from None
