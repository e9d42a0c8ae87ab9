"""Inpainting holes: box, several boxes, free-form strokes; True = missing (files store 255 = missing)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from .seeds import rand_int, uniform

MASK_KINDS = ("box", "boxes", "strokes")


def box_mask(h: int, w: int, area: float, g: torch.Generator) -> torch.Tensor:
    """One axis-aligned box covering ~``area`` of the image, aspect ratio in [1/2, 2]."""
    aspect = math.exp(uniform(-math.log(2), math.log(2), g))
    bh = max(1, min(h, round(math.sqrt(area * h * w / aspect))))
    bw = max(1, min(w, round(area * h * w / bh)))
    top, left = rand_int(0, h - bh, g), rand_int(0, w - bw, g)
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[:, top:top + bh, left:left + bw] = True
    return m


def boxes_mask(h: int, w: int, area: float, g: torch.Generator, max_boxes: int = 5) -> torch.Tensor:
    """Several boxes whose union covers ~``area``: boxes are added until the target is reached."""
    m = torch.zeros(1, h, w, dtype=torch.bool)
    n = rand_int(2, max_boxes, g)
    for _ in range(64):
        if m.float().mean().item() >= area:
            break
        remaining = area - m.float().mean().item()
        m |= box_mask(h, w, max(remaining, area / n) * uniform(0.6, 1.0, g), g)
    return m


def strokes_mask(h: int, w: int, g: torch.Generator, *, strokes: tuple[int, int] = (1, 3),
                 vertices: tuple[int, int] = (4, 12), width_frac: tuple[float, float] = (12 / 256, 40 / 256)
                 ) -> torch.Tensor:
    """Free-form brush strokes (DeepFill v2 style): random walks drawn with a round brush.

    Brush width and stroke length scale with the image (defaults are DeepFill
    v2's 12-40 px on 256 px images).
    """
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    scale = min(h, w)
    for _ in range(rand_int(*strokes, g)):
        x, y = uniform(0, w - 1, g), uniform(0, h - 1, g)
        width = max(1, round(uniform(*width_frac, g) * scale))
        points = [(x, y)]
        for _ in range(rand_int(*vertices, g)):
            angle = uniform(0, 2 * math.pi, g)
            length = uniform(0.05, 0.25, g) * scale
            x = min(max(x + length * math.cos(angle), 0), w - 1)
            y = min(max(y + length * math.sin(angle), 0), h - 1)
            points.append((x, y))
        draw.line(points, fill=255, width=width)
        r = width / 2
        for px, py in points:
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return torch.from_numpy(np.asarray(img) > 127)[None].clone()


def random_mask(kind: str, h: int, w: int, g: torch.Generator,
                hole_range: tuple[float, float] = (0.05, 0.4)) -> torch.Tensor:
    """A mask of ``kind`` whose hole ratio lies in ``hole_range`` (box kinds aim at a uniform draw in it)."""
    lo, hi = hole_range
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"hole ratio range {lo}-{hi} must satisfy 0 <= lo <= hi <= 1")
    if kind == "box":
        return box_mask(h, w, uniform(lo, hi, g), g)
    if kind == "boxes":
        return boxes_mask(h, w, uniform(lo, hi, g), g)
    if kind == "strokes":
        # Add strokes until the ratio reaches the range; start over if one overshoots.
        for _ in range(200):
            m = torch.zeros(1, h, w, dtype=torch.bool)
            for _ in range(64):
                ratio = m.float().mean().item()
                if ratio >= lo:
                    break
                m |= strokes_mask(h, w, g)
            if lo <= m.float().mean().item() <= hi:
                return m
        raise ValueError(f"could not draw strokes with hole ratio in {lo}-{hi} on {w}x{h}")
    raise ValueError(f"unknown mask kind {kind!r}; use one of {', '.join(MASK_KINDS)}")


def apply_holes(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """Set missing pixels (mask True) to ``fill`` in every channel."""
    return torch.where(mask, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


def mask_in_range(kind: str, h: int, w: int, g: torch.Generator, hole_range: tuple[float, float],
                  tries: int = 100) -> torch.Tensor:
    """``random_mask`` redrawn until its measured hole ratio lies in ``hole_range``.

    Box sizes are rounded to whole pixels and ``boxes`` overlap, so a single
    draw can land just outside the range (~2 % of box and ~30 % of boxes
    draws); test sets promise the range, so the draw is repeated from the same
    generator, which keeps the result a function of the seed.
    """
    lo, hi = hole_range
    for _ in range(tries):
        m = random_mask(kind, h, w, g, hole_range)
        if lo <= m.float().mean().item() <= hi:
            return m
    raise ValueError(f"could not draw a {kind!r} mask with hole ratio in {lo:g}-{hi:g} on {w}x{h} "
                     f"in {tries} tries; widen the range")
