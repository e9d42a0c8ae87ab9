"""The matrix exponential of the 1x1 convolutions' skew matrices, with no data-dependent control flow.

``torch.linalg.matrix_exp`` picks its Taylor degree from the matrix's norm on the host: one device-to-host
sync per call, which a captured (CUDA graph) or fully compiled training step cannot contain.  Here the
degree is fixed and the scaling-and-squaring count is computed on the device: ``S / 2^s`` with
``||S / 2^s||_1 <= THETA`` goes through one Taylor polynomial of degree ``DEGREE``, then is squared
``MAX_SQUARINGS`` times, each squaring kept only where it is one of the ``s`` the matrix needs.

With ``THETA`` = 1 the truncated tail is below 1/19! ~ 8e-18 of the result, under float64's rounding, so
``W`` agrees with ``torch.linalg.matrix_exp`` to rounding (~1e-14 for the shipped weights; the tests hold it
to 1e-12).  ``MAX_SQUARINGS`` = 16 covers ``||S||_1`` up to 65,536; a trained 48-channel skew matrix has
~60, and an orthogonal ``W`` never needs a larger ``S`` than one of norm ~pi per singular direction.
"""

from __future__ import annotations

import math

import torch

DEGREE = 18
THETA = 1.0
MAX_SQUARINGS = 16
_COEFFS = [1.0 / math.factorial(k) for k in range(DEGREE + 1)]
_BLOCK = 5  # Paterson-Stockmeyer block: X^1..X^5 once, then 3 products for the degree-18 polynomial


def squarings(s: torch.Tensor) -> torch.Tensor:
    """The squaring count per matrix of a batch (..., n, n): ceil(log2(||S||_1 / THETA)), clamped, on the device."""
    norm = s.abs().sum(dim=-2).amax(dim=-1)
    count = torch.ceil(torch.log2(norm.clamp_min(THETA) / THETA))
    return count.clamp(0, MAX_SQUARINGS)


def _taylor(x: torch.Tensor) -> torch.Tensor:
    """sum_k x^k / k! for k <= DEGREE, by Paterson-Stockmeyer (7 matrix products)."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device).expand_as(x)
    powers = [eye, x]
    for _ in range(_BLOCK - 1):
        powers.append(powers[-1] @ x)
    top = powers[_BLOCK]
    result = None
    for start in reversed(range(0, DEGREE + 1, _BLOCK)):
        chunk = sum(_COEFFS[start + j] * powers[j] for j in range(_BLOCK) if start + j <= DEGREE)
        result = chunk if result is None else chunk + result @ top
    return result


def matrix_exp_fixed(s: torch.Tensor) -> torch.Tensor:
    """exp(s) for a batch of square matrices (..., n, n), with a fixed sequence of kernels (no host sync)."""
    count = squarings(s)
    x = _taylor(s * torch.exp2(-count)[..., None, None])
    for i in range(MAX_SQUARINGS):
        x = torch.where((count > i)[..., None, None], x @ x, x)
    return x
