"""What a step minimises: L1 to the clean patch (the paper's loss) or L2, plus, for an IRAE, a bound on
the gain of its inverse direction.

For inpainting the loss covers the hole pixels only: restore pastes every known pixel back as it was, so
what the model does there is never seen, and a whole-image loss would spend capacity on them.  L2 is
offered because a hole's content is uncertain: L1 is minimised by the per-pixel median of what could be
there, L2 by the mean, and PSNR (a mean squared error) rewards the mean.  Measured on inpainting, L2
fine-tuning still scored below L1, so L1 stays the default.
"""

from __future__ import annotations

import torch

INVERSE_PROBE = 1e-3  # default size of the finite-difference probe on the restored patches
# Below this size the probe is measured against a second inverse pass: the round trip's own error is
# then no longer small beside the probe's response.
SMALL_PROBE = 1e-4


LOSSES = ("l1", "l2")


def training_loss(restored: torch.Tensor, clean: torch.Tensor, holes: torch.Tensor | None,
                  kind: str = "l1", sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 (or squared error, ``kind`` l2) over every pixel, or over the holes' pixels (all channels)
    when ``holes`` is given; ``sample_weight`` (one per patch) makes it a weighted mean over the patches
    whose scale stays that of the plain mean (the learning rate and the divergence guard keep their sense)."""
    err = restored.float() - clean
    err = err.abs() if kind == "l1" else err.square()
    if sample_weight is not None:
        per_patch = err.flatten(1).mean(dim=1)
        return (per_patch * sample_weight).sum() / sample_weight.sum()
    if holes is None:
        return err.mean()
    weight = holes.to(clean.dtype)
    return (err * weight).sum() / (weight.sum() * clean.shape[1]).clamp_min(1.0)


def low_sigma_weight(sigma: torch.Tensor, floor: float) -> torch.Tensor:
    """1 / max(sigma, floor) per patch (sigma on the 0-255 scale)."""
    return 1.0 / sigma.clamp_min(floor)


def probe_direction(shape: torch.Size, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """The inverse-gain probe's random direction (unit variance per pixel)."""
    return torch.randn(shape, generator=gen, device=gen.device).to(device)


def inverse_gain_penalty(inverse, restored: torch.Tensor, inp: torch.Tensor, max_gain: float,
                         direction: torch.Generator | torch.Tensor, probe: float = INVERSE_PROBE) -> torch.Tensor:
    """Hinge on the inverse direction's gain, one finite difference per patch (Behrmann et al. 2021).

    inverse(restored + d) - inp = inverse(restored + d) - inverse(restored) in exact
    arithmetic, so one extra inverse pass measures ||J_inv d|| / ||d|| for a random d.
    ``inverse`` is the model's inverse (``model.inverse``, or its compiled form).

    The size matters: a trained inverse can be far steeper within 1e-4 of a point than over 1e-3 (its
    couplings bend), and fp32 rounding errors (~1e-7) see the steep part.  A ``probe`` below
    SMALL_PROBE is measured as inverse(restored + d) - inverse(restored), one inverse pass more.

    ``direction``: the generator ``d`` is drawn from, or ``d / probe`` drawn already (``probe_direction``:
    a compiled step cannot take a generator).
    """
    if not isinstance(direction, torch.Tensor):  # a generator (a compiled step cannot test for one)
        direction = probe_direction(restored.shape, direction, restored.device)
    d = direction.to(restored.dtype) * probe
    back = inverse(restored + d)
    base = inverse(restored) if probe < SMALL_PROBE else inp
    gain = (back.float() - base.float()).flatten(1).norm(dim=1) / d.float().flatten(1).norm(dim=1)
    return torch.relu(torch.log(gain / max_gain)).pow(2).mean()
