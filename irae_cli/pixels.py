"""Float images <-> 8-bit levels: the one home of the conversion, both ways.

Images are float tensors in [0, 1], shape (C, H, W) with C = 1 or 3.  Going to
8 bits clips and rounds half to even, in the tensor's own float dtype as BasicSR's
``tensor2img`` does: ``levels_u8`` is that rule, and every 8-bit file, metric, test
set and training pack irae makes goes through it.  Coming from 8 bits is
``level / 255`` rounded once in float32 (``from_levels_u8`` for tensors,
``planes_from_u8`` for decoded arrays); every reader, the training batches and
the classical methods go through those.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def levels_u8(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] -> uint8 levels, same shape and device."""
    # one temporary, scaled and rounded in place: a large image's encode holds one float copy, not three
    return x.detach().clamp(0, 1).mul_(255).round_().to(torch.uint8)


def from_levels_u8(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 levels -> float in [0, 1] (``level / 255`` in ``dtype``), same shape and device."""
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 levels, got {t.dtype}")
    return t.to(dtype).div_(255.0)  # the converted copy is this call's own: divided in place


def planes_from_u8(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> contiguous (C, H, W) float32 in [0, 1], written once: a large image
    costs one float copy, not three (a float copy, its quotient, and its transposed copy)."""
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 levels, got {arr.dtype}")
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    planes = np.empty((arr.shape[2], *arr.shape[:2]), np.float32)
    for c in range(arr.shape[2]):
        np.divide(arr[:, :, c], np.float32(255.0), out=planes[c], dtype=np.float32)
    return planes


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """What storing an 8-bit file does, in ``x``'s dtype: the levels divided by 255."""
    return from_levels_u8(levels_u8(x), x.dtype)


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
    return from_levels_u8(t)


def mask_u8(mask: torch.Tensor) -> np.ndarray:
    """(1, H, W) or (H, W) bool, True = missing -> (H, W) uint8, 255 = missing (how mask files store holes)."""
    return mask.reshape(mask.shape[-2:]).cpu().numpy().astype(np.uint8) * 255


def mask_to_pil(mask: torch.Tensor) -> Image.Image:
    """(1, H, W) bool, True = missing -> 8-bit grayscale, 255 = missing."""
    return Image.fromarray(mask_u8(mask), "L")
