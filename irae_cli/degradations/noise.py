"""Additive Gaussian noise (storing it in an 8-bit file: ``pixels.quantize_u8``)."""

from __future__ import annotations

import torch


def add_gaussian_noise(x: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, (sigma/255)^2), unclipped.  ``sigma`` is on the 0-255 scale, scalar or one per image."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 1:
        s = s.view(-1, *([1] * (x.ndim - 1)))
    return x + noise * (s / 255.0)
