"""Estimate the level of additive white Gaussian noise in an image from the image alone.

The one estimator irae has: ``irae restore --task auto`` routes files by it, and a model
conditioned on the noise level would read it from here.

Method: Immerkaer's 3x3 operator (the difference of two Laplacians) cancels every
locally planar patch of the image and leaves ``6 sigma`` of white noise.  Texture and
edges survive it too, so the image is cut into blocks, each block gives its own
estimate, and the smooth blocks speak: a low percentile of the block estimates, scaled
so that pure noise gives back its sigma.  Pixels next to a clipped value (0 or 255 in
an 8-bit file, where the noise is cut off) are left out, and so are blocks made mostly
of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLOCK = 16  # side of the blocks, in pixels of the operator's output
PERCENTILE = 0.10  # the smoothest tenth of the blocks: texture raises a block's estimate, never lowers it
MIN_VALID = 0.9  # a block is used when at least this share of its pixels is away from clipped values
# The 10th percentile of block estimates of pure white noise lies below its sigma (each block's
# estimate scatters around sigma); measured on synthetic noise (see tests/test_noise_estimate.py).
PERCENTILE_GAIN = 1.075
_MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2) / 6.0  # E|N(0, (6 sigma)^2)| = 6 sigma sqrt(2/pi)


def estimate_sigma(x: torch.Tensor) -> float | torch.Tensor:
    """The noise sigma on the 0-255 scale of a (C, H, W) image in [0, 1] (a float), or of each image of an
    (N, C, H, W) batch (a tensor of N).  Colour channels are pooled: the noise is taken as equal in each."""
    if x.ndim == 3:
        return float(estimate_sigma(x.unsqueeze(0))[0])
    if x.ndim != 4:
        raise ValueError(f"expected a (C, H, W) or (N, C, H, W) image, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return torch.zeros(n)
    x = x.detach().float()
    # Immerkaer's operator as two separable second differences, in place (a 3x3 conv2d is ~10x slower on CPU)
    rows = x[..., :, :-2] + x[..., :, 2:]
    rows.sub_(x[..., :, 1:-1], alpha=2)
    response = rows[..., :-2, :] + rows[..., 2:, :]
    response.sub_(rows[..., 1:-1, :], alpha=2)
    response = response.abs_().mean(dim=1, keepdim=True).mul_(255.0)
    clipped = (x.amin(dim=1, keepdim=True) <= 0.5 / 255) | (x.amax(dim=1, keepdim=True) >= 254.5 / 255)
    valid = ~_dilate3(clipped)  # the operator's outputs that touch no clipped pixel
    return torch.stack([_from_blocks(response[i:i + 1], valid[i:i + 1].float()) for i in range(n)])


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) bool -> (N, 1, H-2, W-2): True where any pixel of the 3x3 window is."""
    r = m[..., :, :-2] | m[..., :, 1:-1] | m[..., :, 2:]
    return r[..., :-2, :] | r[..., 1:-1, :] | r[..., 2:, :]


def _from_blocks(response: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The estimate of one image from its (1, 1, h, w) operator response and valid-pixel map."""
    h, w = response.shape[-2:]
    block = min(BLOCK, h, w)
    share = F.avg_pool2d(valid, block)
    mean_abs = F.avg_pool2d(response * valid, block) / share.clamp_min(1e-6)
    usable = mean_abs[share >= MIN_VALID]
    if usable.numel() == 0:  # (nearly) everything clipped: what is left, or nothing to measure
        total = valid.sum()
        if total < 1:
            return torch.zeros(())
        return (response * valid).sum() / total * _MEAN_ABS_TO_SIGMA
    gain = PERCENTILE_GAIN if usable.numel() > 1 else 1.0
    return torch.quantile(usable, PERCENTILE) * _MEAN_ABS_TO_SIGMA * gain
