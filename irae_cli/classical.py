"""Classical restorers, scored beside the networks: what a user could do without irae.

Each method restores one degraded image (C, H, W float in [0, 1]) given what the
benchmark knows about its degradation -- the noise sigma, the hole mask --
which is the usual, generous way to run a classical baseline (an oracle sigma
for BM3D and non-local means).  The harmonic fill needs nothing beyond torch;
the others come from optional packages (``pip install 'irae[classical]'``):

* ``cbm3d``: colour BM3D (``bm3d`` package, ``bm3d_rgb``; plain BM3D on grey
  images).  The ``bm3d`` package is free for non-commercial use only -- it is
  never a core dependency of irae.
* ``nlm``: non-local means (scikit-image, BSD), fast mode, 5x5 patches, search
  distance 6, h = 0.8 sigma: the permissively licensed denoising row.
* ``telea``, ``navier-stokes``: OpenCV's two inpainting methods (Apache-2.0),
  radius 3.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .fill import harmonic_fill
from .pixels import mask_u8, planes_from_u8, to_u8

EXTRA = "pip install 'irae[classical]'"


@dataclass(frozen=True)
class Classical:
    name: str  # the row name in benchmark tables and JSON
    task: str
    describe: str
    module: str | None  # what must be importable; None = always available
    package: str | None  # the pip package that provides it
    licence: str
    run: Callable[[torch.Tensor, dict, torch.Tensor | None], torch.Tensor]

    @property
    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).permute(1, 2, 0).cpu().numpy()


def _chw(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    if a.ndim == 2:
        a = a[..., None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(like.dtype).clamp(0, 1)


def _sigma(params: dict) -> float:
    sigma = params.get("sigma")
    if sigma is None:
        raise ValueError("this level has no known noise sigma")
    return float(sigma) / 255.0


def _cbm3d(x: torch.Tensor, params: dict, mask: torch.Tensor | None) -> torch.Tensor:
    import bm3d

    a, sigma = _hwc(x), _sigma(params)
    if sigma <= 0:
        return x.clone()
    out = bm3d.bm3d_rgb(a, sigma) if a.shape[2] == 3 else bm3d.bm3d(a[..., 0], sigma)
    return _chw(np.asarray(out), x)


def _nlm(x: torch.Tensor, params: dict, mask: torch.Tensor | None) -> torch.Tensor:
    from skimage.restoration import denoise_nl_means

    a, sigma = _hwc(x), _sigma(params)
    if sigma <= 0:
        return x.clone()
    out = denoise_nl_means(a if a.shape[2] == 3 else a[..., 0], h=0.8 * sigma, sigma=sigma, fast_mode=True,
                           patch_size=5, patch_distance=6, channel_axis=-1 if a.shape[2] == 3 else None)
    return _chw(out, x)


def _opencv(flag_name: str):
    def run(x: torch.Tensor, params: dict, mask: torch.Tensor | None) -> torch.Tensor:
        import cv2

        if mask is None:
            raise ValueError("inpainting needs a mask")
        out = cv2.inpaint(np.ascontiguousarray(to_u8(x)), mask_u8(mask), 3, getattr(cv2, flag_name))
        filled = torch.from_numpy(planes_from_u8(out)).to(x.dtype)
        return torch.where(mask.reshape(1, *mask.shape[-2:]), filled, x)  # known pixels exactly as given
    return run


def _harmonic(x: torch.Tensor, params: dict, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        raise ValueError("inpainting needs a mask")
    return harmonic_fill(x[None], mask.reshape(1, 1, *mask.shape[-2:]))[0]


METHODS = (
    Classical("cbm3d", "denoise", "CBM3D (bm3d_rgb, sigma known)", "bm3d", "bm3d",
              "non-commercial use only", _cbm3d),
    Classical("nlm", "denoise", "non-local means (scikit-image, fast, h = 0.8 sigma, sigma known)", "skimage",
              "scikit-image", "BSD-3-Clause", _nlm),
    Classical("harmonic-fill", "inpaint", "harmonic fill (multi-scale Jacobi)", None, None, "irae's own", _harmonic),
    Classical("telea", "inpaint", "OpenCV Telea inpainting, radius 3", "cv2", "opencv-python-headless",
              "Apache-2.0", _opencv("INPAINT_TELEA")),
    Classical("navier-stokes", "inpaint", "OpenCV Navier-Stokes inpainting, radius 3", "cv2",
              "opencv-python-headless", "Apache-2.0", _opencv("INPAINT_NS")),
)
NAMES = tuple(m.name for m in METHODS)


def for_task(task: str, wanted: str = "all") -> tuple[list[Classical], list[Classical]]:
    """(usable, missing) classical methods of ``task``; ``wanted`` is all, none or comma-separated names."""
    methods = [m for m in METHODS if m.task == task]
    if wanted == "none":
        return [], []
    if wanted != "all":
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = [n for n in names if n not in {m.name for m in methods}]
        if unknown or not names:
            known = ", ".join(m.name for m in methods) or "none for this task"
            raise ValueError(f"--classical {wanted!r}: use all, none or names from: {known}")
        methods = [m for m in methods if m.name in names]
    return [m for m in methods if m.available], [m for m in methods if not m.available]
