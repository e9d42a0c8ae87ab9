"""Degradations as plain functions on tensors, each taking an explicit ``torch.Generator``.

Shared by ``irae degrade`` (files), ``irae train`` (batches, possibly on the GPU)
and ``irae benchmark``: one definition of what noise, JPEG and holes are.

Images are float tensors in [0, 1], shape (C, H, W) or (N, C, H, W).  Masks are
bool tensors (1, H, W) or (N, 1, H, W) with True = missing (files store 255 =
missing).  All randomness comes from the generator passed in, so a result is a
function of (seed, inputs) only; ``derive_seed`` makes per-image seeds that do
not depend on file order or worker count.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a global seed and identifying parts (relative path, level, ...)."""
    text = "\x1f".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator_for(seed: int, *parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *parts))


def uniform(lo: float, hi: float, generator: torch.Generator, n: int | None = None) -> torch.Tensor | float:
    """Draw from U[lo, hi] (exactly lo when lo == hi) with ``generator``."""
    u = torch.rand(n if n is not None else 1, generator=generator, device=generator.device, dtype=torch.float64)
    v = lo + (hi - lo) * u
    return v if n is not None else float(v.item())


# --- noise -----------------------------------------------------------------

def add_gaussian_noise(x: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, (sigma/255)^2), unclipped.  ``sigma`` is on the 0-255 scale, scalar or one per image."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 1:
        s = s.view(-1, *([1] * (x.ndim - 1)))
    return x + noise * (s / 255.0)


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """What storing an 8-bit file does: clip to [0, 1] and round to 1/255 steps."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


# --- JPEG ------------------------------------------------------------------

def to_pil(x: torch.Tensor) -> Image.Image:
    arr = torch.round(x.detach().clamp(0, 1) * 255).to(torch.uint8).cpu()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy(), "L")
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


def from_pil(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float() / 255.0


def jpeg_bytes(x: torch.Tensor, quality: int, subsampling: str = "4:2:0") -> bytes:
    """Encode one (C, H, W) image with Pillow's libjpeg (optimize off, no EXIF)."""
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"unknown chroma subsampling {subsampling!r}; use one of {', '.join(SUBSAMPLING)}")
    buf = io.BytesIO()
    img = to_pil(x)
    kwargs = {"subsampling": SUBSAMPLING[subsampling]} if img.mode == "RGB" else {}
    img.save(buf, format="JPEG", quality=int(quality), **kwargs)
    return buf.getvalue()


def jpeg_compress(x: torch.Tensor, quality: int | list[int], subsampling: str = "4:2:0",
                  double_quality: int | list[int] | None = None) -> torch.Tensor:
    """Real JPEG round trip (encode + decode) per image; a batch may have one quality per image.

    ``double_quality`` first compresses at that quality, then at ``quality``
    (double JPEG).  Runs on the CPU through Pillow; results return to x's device.
    """
    batched = x.ndim == 4
    xs = x if batched else x[None]
    n = xs.shape[0]
    qs = quality if isinstance(quality, (list, tuple)) else [quality] * n
    dq = double_quality if isinstance(double_quality, (list, tuple)) else [double_quality] * n
    out = []
    for img, q, q0 in zip(xs, qs, dq):
        if q0 is not None:
            img = from_pil(Image.open(io.BytesIO(jpeg_bytes(img, q0, subsampling))))
        out.append(from_pil(Image.open(io.BytesIO(jpeg_bytes(img, q, subsampling)))))
    y = torch.stack(out).to(device=x.device, dtype=x.dtype)
    return y if batched else y[0]


# --- inpainting masks ------------------------------------------------------

MASK_KINDS = ("box", "boxes", "strokes")


def _rand_int(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g, device=g.device).item())


def box_mask(h: int, w: int, area: float, g: torch.Generator) -> torch.Tensor:
    """One axis-aligned box covering ~``area`` of the image, aspect ratio in [1/2, 2]."""
    aspect = math.exp(uniform(-math.log(2), math.log(2), g))
    bh = max(1, min(h, round(math.sqrt(area * h * w / aspect))))
    bw = max(1, min(w, round(area * h * w / bh)))
    top, left = _rand_int(0, h - bh, g), _rand_int(0, w - bw, g)
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[:, top:top + bh, left:left + bw] = True
    return m


def boxes_mask(h: int, w: int, area: float, g: torch.Generator, max_boxes: int = 5) -> torch.Tensor:
    """Several boxes whose union covers ~``area``: boxes are added until the target is reached."""
    m = torch.zeros(1, h, w, dtype=torch.bool)
    n = _rand_int(2, max_boxes, g)
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
    for _ in range(_rand_int(*strokes, g)):
        x, y = uniform(0, w - 1, g), uniform(0, h - 1, g)
        width = max(1, round(uniform(*width_frac, g) * scale))
        points = [(x, y)]
        for _ in range(_rand_int(*vertices, g)):
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
