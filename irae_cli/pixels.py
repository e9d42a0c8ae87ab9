"""Float image tensors <-> 8-bit arrays and Pillow images, for degraded images and test sets.

Images are float tensors in [0, 1], shape (C, H, W) with C = 1 or 3.  Going to
8 bits clips and rounds half to even, in the tensor's own float dtype as BasicSR's
``tensor2img`` does: ``levels_u8`` is that rule, and every 8-bit file, metric, test
set and training pack irae makes goes through it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def levels_u8(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] -> uint8 levels, same shape and device."""
    # one temporary, scaled and rounded in place: a large image's encode holds one float copy, not three
    return x.detach().clamp(0, 1).mul_(255).round_().to(torch.uint8)


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """What storing an 8-bit file does, in ``x``'s dtype: the levels divided by 255."""
    return levels_u8(x).to(x.dtype) / 255.0


def to_u8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 (H, W) for one channel, (H, W, C) otherwise."""
    arr = levels_u8(x).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def to_pil(x: torch.Tensor) -> Image.Image:
    arr = to_u8(x)
    return Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB")


def from_pil(img: Image.Image) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(img).copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float() / 255.0


def mask_to_pil(mask: torch.Tensor) -> Image.Image:
    """(1, H, W) bool, True = missing -> 8-bit grayscale, 255 = missing (how mask files store holes)."""
    return Image.fromarray(mask[0].cpu().numpy().astype(np.uint8) * 255, "L")
