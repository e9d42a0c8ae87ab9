"""Classical hole filling: the harmonic (Laplace) interpolant, as a baseline for inpainting.

Inside the hole each pixel becomes the average of its four neighbours while
known pixels stay fixed -- the smoothest fill the border allows, and what a
learned inpainter has to beat.  Plain Jacobi iteration needs about (hole
width)^2 sweeps to converge, so the fill is solved coarse-to-fine: the image
is halved until the holes are a few pixels across, solved there, upsampled as
the starting point of the next finer level, and relaxed again.  Deterministic,
pure torch, any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["harmonic_fill"]


def _neighbour_mean(u: torch.Tensor) -> torch.Tensor:
    # Replicate padding = zero normal derivative at the image edge, so a hole
    # touching the edge is not pulled towards an invented value.
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    return 0.25 * (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])


def _fill(x: torch.Tensor, hole: torch.Tensor, iters: int, min_size: int) -> torch.Tensor:
    n, c, h, w = x.shape
    if min(h, w) >= 2 * min_size:
        known = (~hole).to(x.dtype)
        # Coarse pixel = mean of its known fine pixels; unknown only if all four were.
        num = F.avg_pool2d(x * known, 2, ceil_mode=True)
        den = F.avg_pool2d(known, 2, ceil_mode=True)
        coarse_hole = den <= 0
        coarse = _fill(num / den.clamp_min(1e-12), coarse_hole, iters, min_size)
        start = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    else:
        # Coarsest level: start from each image's mean known colour.
        known = (~hole).to(x.dtype)
        count = known.sum(dim=(2, 3), keepdim=True)
        mean = (x * known).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
        start = torch.where(count > 0, mean, torch.full_like(mean, 0.5)).expand_as(x)
    u = torch.where(hole, start, x)
    for _ in range(iters):
        u = torch.where(hole, _neighbour_mean(u), x)
    return u


@torch.no_grad()
def harmonic_fill(images: torch.Tensor, masks: torch.Tensor, *, iters: int = 60, min_size: int = 8) -> torch.Tensor:
    """Fill the holes of ``images`` (N,C,H,W float) where ``masks`` (N,1,H,W bool) is True.

    Known pixels are returned bit for bit; hole pixels approximately solve
    Laplace's equation with the known pixels as boundary values.  ``iters``
    Jacobi sweeps run at every pyramid level (levels down to ``min_size``
    pixels).  An image with no known pixel at all comes back mid-grey.
    """
    if images.dim() != 4 or masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[0] != images.shape[0] \
            or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"expected images (N,C,H,W) and masks (N,1,H,W), got {tuple(images.shape)} "
                         f"and {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError("masks must be bool (True = missing)")
    if not bool(masks.any()):
        return images.clone()
    dtype = images.dtype
    x = images.to(torch.float32) if dtype != torch.float64 else images
    out = _fill(x, masks.to(x.device), iters, min_size)
    return torch.where(masks.to(x.device), out, x).to(dtype)
