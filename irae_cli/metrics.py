"""Image-quality metrics that reproduce the numbers restoration papers report.

Published PSNR/SSIM tables (DnCNN, SwinIR, FBCNN, ... via BasicSR/KAIR) are not
"PSNR of the network output": they are computed after the output is rounded to
uint8 levels, on either RGB or BT.601 luma, with SSIM's MATLAB window and
'valid' border handling. Small convention differences move results by more than
the gaps between methods, so every choice is fixed here and spelled out in the
metric's key (``psnr_y601_u8`` = PSNR on BT.601 Y of uint8-rounded images).

Conventions (the "paper preset"):

* Images are torch tensors (C,H,W), float in [0, 1] or uint8. With
  ``round_u8=True`` (default) float images are clamped and rounded to uint8
  levels first (:func:`to_u8_float`); all math is float64 on the 0..255 scale.
* ``channel="rgb"`` uses all channels as given (for 1-channel images: the gray
  channel); ``channel="y"`` uses MATLAB ``rgb2ycbcr`` luma, unrounded
  (:func:`rgb_to_y`); a 1-channel image is its own Y.
* ``border`` crops that many pixels from every edge before anything else.
* Single-image functions take one image; use :func:`per_image` for (N,C,H,W).
* PSNR of identical images is ``math.inf``; :func:`mean_ignoring_inf`
  aggregates such values without letting one inf swallow the mean.

Pure torch, no file I/O, works on any device (results are Python floats).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F

from .pixels import levels_u8

__all__ = [
    "TASKS",
    "FiniteMean",
    "compute_all",
    "mean_ignoring_inf",
    "metric_keys",
    "per_image",
    "psnr",
    "psnr_b",
    "rgb_to_y",
    "ssim",
    "to_u8_float",
]

TASKS = ("denoise", "jpeg", "inpaint")

# MATLAB rgb2ycbcr (BT.601, studio range) luma row, for R, G, B on 0..255.
_Y601 = (65.481, 128.553, 24.966)

# SSIM constants of Wang et al. 2004 / the reference MATLAB code, 0..255 scale.
_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2

_JPEG_BLOCK = 8
_PEAK2 = 255.0 ** 2


# --------------------------------------------------------------------------- input handling

def to_u8_float(x: torch.Tensor) -> torch.Tensor:
    """Round an image to uint8 levels, returned as float64 on the 0..255 scale.

    Papers evaluate the image they would save, so a float [0, 1] image is
    clamped, scaled by 255 and rounded (half to even, as numpy does). Scaling
    and rounding happen in the input's own float dtype -- float32 for typical
    model output -- exactly like BasicSR ``tensor2img`` / KAIR ``single2uint``,
    so the levels match theirs bit for bit. uint8 tensors are taken as levels.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float64)
    if not x.is_floating_point():
        raise TypeError(f"expected a float [0, 1] or uint8 image tensor, got dtype {x.dtype}")
    return levels_u8(x).to(torch.float64)


def _to_255(x: torch.Tensor, round_u8: bool) -> torch.Tensor:
    """float64 on the 0..255 scale; rounded to uint8 levels when ``round_u8``."""
    if round_u8 or x.dtype == torch.uint8:
        return to_u8_float(x)
    if not x.is_floating_point():
        raise TypeError(f"expected a float [0, 1] or uint8 image tensor, got dtype {x.dtype}")
    return x.to(torch.float64) * 255.0


def _as_chw(x: torch.Tensor, name: str) -> torch.Tensor:
    """Accept (H,W), (C,H,W) or (1,C,H,W); batches must go through per_image."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 3:
        return x
    if x.dim() == 4 and x.shape[0] == 1:
        return x[0]
    raise ValueError(f"{name}: expected one image (C,H,W), got shape {tuple(x.shape)}; "
                     "use per_image() for batches")


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return x
    h, w = x.shape[-2:]
    if 2 * border >= min(h, w):
        raise ValueError(f"border {border} leaves nothing of a {h}x{w} image")
    return x[..., border:h - border, border:w - border]


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma as MATLAB ``rgb2ycbcr`` computes it, for images on the 0..255 scale.

    ``Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16`` (white -> 235,
    black -> 16), left unrounded as BasicSR/KAIR do for Y-channel metrics.
    Input (..., 3, H, W) or (..., 1, H, W); a 1-channel image is returned as is
    (gray images are treated as luma). Output (..., 1, H, W), float64.
    """
    c = x.shape[-3] if x.dim() >= 3 else 0
    if c == 1:
        return x.to(torch.float64)
    if c != 3:
        raise ValueError(f"Y conversion needs 1 or 3 channels, got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (_Y601[0] * r + _Y601[1] * g + _Y601[2] * b) / 255.0 + 16.0


def _select(x255: torch.Tensor, channel: str) -> torch.Tensor:
    if channel == "rgb":
        return x255
    if channel == "y":
        return rgb_to_y(x255)
    raise ValueError(f"channel must be 'rgb' or 'y', got {channel!r}")


def _pair(a: torch.Tensor, b: torch.Tensor, channel: str, border: int, round_u8: bool):
    """Shared preamble: shape check, rounding, crop, channel choice."""
    a, b = _as_chw(a, "a"), _as_chw(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a = _select(_crop(_to_255(a, round_u8), border), channel)
    b = _select(_crop(_to_255(b, round_u8), border), channel).to(a.device)
    return a, b


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0.0 else 10.0 * math.log10(_PEAK2 / mse)


# --------------------------------------------------------------------------- metrics

def psnr(a: torch.Tensor, b: torch.Tensor, *, channel: str = "rgb", border: int = 0,
         round_u8: bool = True, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB with peak 255: ``10 log10(255^2 / MSE)``; ``math.inf`` when MSE is 0.

    ``mask`` (bool, (H,W) or (1,H,W), True = count this pixel) restricts the
    MSE to those pixels, all channels there -- e.g. hole-only PSNR for
    inpainting, where the known pixels would otherwise inflate the score. The
    mask is cropped by ``border`` like the images. Symmetric in ``a``/``b``.
    """
    a, b = _pair(a, b, channel, border, round_u8)
    sq = (a - b) ** 2
    if mask is None:
        return _psnr_from_mse(sq.mean().item())
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor (True = pixels to count)")
    m = mask[0] if mask.dim() == 3 and mask.shape[0] == 1 else mask
    if m.dim() != 2:
        raise ValueError(f"mask must be (H,W) or (1,H,W), got shape {tuple(mask.shape)}")
    m = _crop(m, border).to(sq.device)
    if m.shape != sq.shape[-2:]:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image {tuple(sq.shape[-2:])}"
                         f" (after border {border})")
    n = int(m.sum().item())
    if n == 0:
        raise ValueError("mask selects no pixels; masked PSNR is undefined")
    return _psnr_from_mse((sq[:, m].sum() / (n * sq.shape[0])).item())


def _gaussian_1d(device: torch.device) -> torch.Tensor:
    """1-D factor of the 11x11, sigma 1.5, sum-1 Gaussian (MATLAB fspecial / cv2.getGaussianKernel)."""
    t = torch.arange(_SSIM_WIN, dtype=torch.float64, device=device) - (_SSIM_WIN - 1) / 2
    g = torch.exp(-(t * t) / (2.0 * _SSIM_SIGMA ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, *, channel: str = "rgb", border: int = 0,
         round_u8: bool = True) -> float:
    """SSIM exactly as the reference MATLAB code / BasicSR ``calculate_ssim``.

    Per channel: 11x11 Gaussian window (sigma 1.5), C1 = (0.01*255)^2,
    C2 = (0.03*255)^2, 'valid' filtering only (no padding, so the SSIM map is
    (H-10)x(W-10) and image edges are never invented), mean of the map; then
    the mean over channels. float64 throughout. The window is applied as its
    two 1-D factors (same window, ~1e-13 apart, ~20x faster than a float64
    11x11 conv2d on CPU). Symmetric in ``a``/``b``.
    """
    a, b = _pair(a, b, channel, border, round_u8)
    c, h, w = a.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise ValueError(f"SSIM needs at least {_SSIM_WIN}x{_SSIM_WIN} pixels, got {h}x{w}")
    g = _gaussian_1d(a.device)
    # All five local statistics of all channels in one pass: (5C, 1, H, W).
    z = torch.cat([a, b, a * a, b * b, a * b]).unsqueeze(1)
    z = F.conv2d(z, g.view(1, 1, _SSIM_WIN, 1))  # valid correlation down the columns
    z = F.conv2d(z, g.view(1, 1, 1, _SSIM_WIN))  # then along the rows
    mu1, mu2, e11, e22, e12 = z[:, 0].split(c)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    ssim_map = ((2 * mu12 + _SSIM_C1) * (2 * s12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (s1 + s2 + _SSIM_C2))
    return ssim_map.mean(dim=(1, 2)).mean().item()


def _blocking_effect_factor(plane: torch.Tensor) -> float:
    """BEF of one (H,W) plane (Yim & Bovik 2011, 8x8 blocks), counted as BasicSR/KAIR do.

    Mean squared step across block boundaries minus the mean squared step
    between other neighbours, scaled by log2(8)/log2(min(H, W)); 0 when the
    boundaries are no rougher than the rest. Boundary counts use
    ``H*(W//8 - 1)`` / ``W*(H//8 - 1)`` like the reference code (exact when
    H, W are multiples of 8), so sizes that are not still match its numbers;
    a plane with no block boundary at all (< 16 px both ways) gets BEF 0.
    """
    h, w = plane.shape
    blk = _JPEG_BLOCK
    dh = (plane[:, :-1] - plane[:, 1:]) ** 2  # step between columns j and j+1
    dv = (plane[:-1, :] - plane[1:, :]) ** 2  # step between rows i and i+1
    col_b = torch.zeros(w - 1, dtype=torch.bool, device=plane.device)
    col_b[blk - 1::blk] = True
    row_b = torch.zeros(h - 1, dtype=torch.bool, device=plane.device)
    row_b[blk - 1::blk] = True

    n_hb = max(h * (w // blk - 1), 0)
    n_vb = max(w * (h // blk - 1), 0)
    n_b = n_hb + n_vb
    n_bc = h * (w - 1) + w * (h - 1) - n_hb - n_vb
    if n_b <= 0 or n_bc <= 0:
        return 0.0
    d_b = (dh[:, col_b].sum() + dv[row_b, :].sum()).item() / n_b
    d_bc = (dh[:, ~col_b].sum() + dv[~row_b, :].sum()).item() / n_bc
    if d_b <= d_bc:
        return 0.0
    return math.log2(blk) / math.log2(min(h, w)) * (d_b - d_bc)


def psnr_b(a: torch.Tensor, b: torch.Tensor, *, channel: str = "y", border: int = 0,
           round_u8: bool = True) -> float:
    """PSNR-B (Yim & Bovik 2011) as BasicSR/KAIR ``calculate_psnrb``: JPEG-deblocking papers report it.

    ``10 log10(255^2 / (MSE + BEF(a)))`` per channel, averaged over channels
    (Y by default, one channel). BEF penalises blockiness *of the restored
    image* ``a`` on the 8x8 grid, so the argument order matters: restored
    first, reference second. Consequence of the definition: identical images
    score ``math.inf`` only when their BEF is 0; a blocky image compared with
    itself gets ``10 log10(255^2 / BEF)``. ``border`` crops before the block
    grid is laid, as the reference code does.
    """
    a, b = _pair(a, b, channel, border, round_u8)
    total = 0.0
    for ac, bc in zip(a, b):
        mse_b = ((ac - bc) ** 2).mean().item() + _blocking_effect_factor(ac)
        total += _psnr_from_mse(mse_b)
    return total / a.shape[0]


# --------------------------------------------------------------------------- batches, keys, aggregation

def per_image(metric: Callable[..., float], a: torch.Tensor, b: torch.Tensor, *,
              mask: torch.Tensor | None = None, **kwargs) -> list[float]:
    """Apply a single-image metric to each image of (N,C,H,W) batches; one float per image.

    Per-image values (not a batch MSE) because papers average PSNR over images.
    ``mask``, if given, is (N,1,H,W) or (N,H,W) and is passed to ``metric``
    image by image (only :func:`psnr` accepts one).
    """
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"per_image expects two (N,C,H,W) batches of equal shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if mask is not None and mask.shape[0] != a.shape[0]:
        raise ValueError(f"mask batch size {mask.shape[0]} != image batch size {a.shape[0]}")
    out = []
    for i in range(a.shape[0]):
        extra = {} if mask is None else {"mask": mask[i]}
        out.append(metric(a[i], b[i], **kwargs, **extra))
    return out


_BASE_KEYS = ("psnr_rgb_u8", "psnr_y601_u8", "ssim_rgb_u8", "ssim_y601_u8")
_TASK_KEYS = {
    "denoise": _BASE_KEYS,
    "jpeg": _BASE_KEYS + ("psnrb_y601_u8",),
    "inpaint": _BASE_KEYS + ("psnr_hole_rgb_u8",),
}


def metric_keys(task: str) -> tuple[str, ...]:
    """Names of the metrics :func:`compute_all` reports for ``task``, in report order.

    Each name states its convention: ``<metric>_<channels>_<rounding>`` with
    ``rgb`` = all channels (the gray channel for 1-channel images), ``y601`` =
    BT.601 luma, ``u8`` = computed on uint8-rounded images, ``hole`` = only
    pixels inside the inpainting mask.
    """
    try:
        return _TASK_KEYS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None


def compute_all(restored: torch.Tensor, clean: torch.Tensor, *, task: str,
                mask: torch.Tensor | None = None) -> dict[str, float]:
    """Every paper-preset metric relevant to ``task``, for one (C,H,W) image pair.

    Returns exactly the keys of :func:`metric_keys` (``task``): denoise ->
    PSNR and SSIM on RGB and on Y; jpeg -> those plus PSNR-B on Y; inpaint ->
    those (whole image) plus hole-only PSNR on RGB, which needs ``mask``
    ((H,W) or (1,H,W) bool, True = hole). For 1-channel images the ``rgb`` keys
    are computed on the gray channel and equal the ``y601`` ones.
    """
    keys = metric_keys(task)
    if task == "inpaint" and mask is None:
        raise ValueError("task 'inpaint' needs a mask for psnr_hole_rgb_u8")
    r = _as_chw(restored, "restored")
    c = _as_chw(clean, "clean")
    out = {
        "psnr_rgb_u8": psnr(r, c, channel="rgb"),
        "psnr_y601_u8": psnr(r, c, channel="y"),
        "ssim_rgb_u8": ssim(r, c, channel="rgb"),
        "ssim_y601_u8": ssim(r, c, channel="y"),
    }
    if "psnrb_y601_u8" in keys:
        out["psnrb_y601_u8"] = psnr_b(r, c, channel="y")
    if "psnr_hole_rgb_u8" in keys:
        out["psnr_hole_rgb_u8"] = psnr(r, c, channel="rgb", mask=mask)
    return {k: out[k] for k in keys}


class FiniteMean(NamedTuple):
    """Mean over finite values plus how many were +inf (perfect reconstructions)."""

    mean: float  # mean of the finite values; nan when there are none
    n_finite: int
    n_inf: int


def mean_ignoring_inf(values: Iterable[float]) -> FiniteMean:
    """Average per-image PSNRs without one perfect image turning the mean into inf.

    +inf values (identical images) are left out of the mean and counted in
    ``n_inf`` so a report can say "mean 32.1 dB over 99 images, 1 exact".
    nan or -inf indicates a bug upstream and raises ``ValueError``.
    """
    finite: list[float] = []
    n_inf = 0
    for v in values:
        v = float(v)
        if v == math.inf:
            n_inf += 1
        elif math.isfinite(v):
            finite.append(v)
        else:
            raise ValueError(f"metric value {v} is neither finite nor +inf")
    mean = math.fsum(finite) / len(finite) if finite else math.nan
    return FiniteMean(mean, len(finite), n_inf)
