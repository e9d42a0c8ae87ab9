"""Seeds and draws: every random choice of a degradation comes from an explicit ``torch.Generator``.

``derive_seed`` makes per-image seeds from identifying parts (relative path, level
name, ...), so a result never depends on file order or worker count.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a global seed and identifying parts (relative path, level, ...)."""
    text = "\x1f".join([str(seed), *map(str, parts)])
    # surrogateescape: a file name that is not UTF-8 hashes as its own bytes (UTF-8 names are unchanged)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "little") >> 1


def generator_for(seed: int, *parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *parts))


def uniform(lo: float, hi: float, generator: torch.Generator, n: int | None = None) -> torch.Tensor | float:
    """Draw from U[lo, hi] (exactly lo when lo == hi) with ``generator``."""
    u = torch.rand(n if n is not None else 1, generator=generator, device=generator.device, dtype=torch.float64)
    v = lo + (hi - lo) * u
    return v if n is not None else float(v.item())


def rand_int(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g, device=g.device).item())
