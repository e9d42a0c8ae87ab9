"""Inpainting masks: finding a mask file for an image, reading it, or taking the holes from alpha.

A mask value at or above half scale means "missing" (255 in 8-bit files);
masks are meant to be 0 or full scale, and values in between are reported
once per file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from .errors import ImageError, warn
from .files import IMAGE_EXTENSIONS
from .imageio import ImageMeta, open_image, refuse_frames, upright

# Mask files and alpha-as-mask: a value at or above half scale means "missing" (255 = missing in 8-bit files).
MASK_THRESHOLD = 0.5


def find_mask(mask_root: str | Path, rel: Path) -> Path | None:
    """The mask for input ``rel``: same relative path under ``mask_root``, any image extension."""
    folder = Path(mask_root) / rel.parent
    exact = folder / rel.name
    if exact.is_file():
        return exact
    try:
        index = _masks_by_stem(str(folder), os.stat(folder).st_mtime_ns)
    except OSError:
        return None
    found = [folder / n for n in index.get(rel.stem, ()) if (folder / n).is_file()]
    if len(found) > 1:
        warn(f"{found[0]}: one of {len(found)} masks for {rel} ({', '.join(p.name for p in found)}); the first "
             f"is used — keep one, or name it exactly as the image")
    return found[0] if found else None


@functools.lru_cache(maxsize=256)
def _masks_by_stem(folder: str, _mtime_ns: int) -> dict[str, tuple[str, ...]]:
    """Image names in ``folder`` by stem, sorted: listed once per folder (and again when it changes),
    not once per image — a folder of 100,000 masks named unlike their images would be quadratic."""
    index: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        p = Path(name)
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            index.setdefault(p.stem, []).append(name)
    return {k: tuple(v) for k, v in index.items()}


def read_mask(path: str | Path, size: tuple[int, int], image: str | Path = "") -> torch.Tensor:
    """Mask file -> bool (1, H, W), True = missing (values >= half scale; 255 in 8-bit files).

    ``size`` is the image's (H, W); a mask of another size is an ``ImageError``.
    """
    path = Path(path)
    img = open_image(path)
    refuse_frames(img, path)
    img = upright(img, path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        values, full = np.asarray(img).astype(np.float32), 65535
    else:
        if img.mode == "P":
            img = img.convert("RGB")
        values, full = np.asarray(img.convert("L")), 255
    missing = values >= round(MASK_THRESHOLD * full)
    _warn_partial(path, values, full, "mask")
    h, w = missing.shape
    if (h, w) != tuple(size):
        about = f" but {image} is {size[1]}x{size[0]}" if image else f", expected {size[1]}x{size[0]}"
        raise ImageError(f"{path}: mask is {w}x{h}{about}; masks must have the image's size")
    return torch.from_numpy(missing.copy())[None]


def mask_from_alpha(meta: ImageMeta, path: str | Path = "") -> torch.Tensor:
    """Transparent pixels (alpha below half) are the holes: bool (1, H, W), True = missing."""
    if meta.alpha is None:
        raise ImageError(f"{path}: has no alpha channel; --mask-from alpha needs transparent holes "
                         f"(or give mask files with --masks)")
    full = 65535 if meta.alpha.dtype == np.uint16 else 255
    _warn_partial(path, meta.alpha, full, "alpha")
    return torch.from_numpy(np.asarray(meta.alpha).astype(np.float32) < MASK_THRESHOLD * full)[None]


def _warn_partial(path: str | Path, values: np.ndarray, full: int, what: str) -> None:
    """Masks are meant to be 0 or full scale; say once per file how values in between were read."""
    between = int(np.count_nonzero((values > 0) & (values < full)))
    if between:
        half = round(MASK_THRESHOLD * full)
        rule = (f"values >= {half} are holes" if what == "mask" else
                f"alpha below {half} is a hole")
        warn(f"{path}: {between} {what} pixel(s) lie between 0 and {full} (anti-aliased or lossy?); {rule}")

