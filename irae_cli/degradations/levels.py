"""What a degradation level is.

A ``Level`` is one named setting (``sigma25``, ``q10``, ``box`` ...).  Its
random part (``draw``) and what a stored file of it holds (``stored``) are
defined here once; ``irae degrade`` writes them, ``irae benchmark`` scores them
and ``irae train`` validates on them, all with the generator
``derive_seed(seed, relative path, level name)``, so the three see the same
pixels for the same image and seed.

Level names: ``sigma25`` (``sigma0-55`` for a blind range), ``q10`` (``-444`` /
``-422`` for other chroma subsampling, ``-dq90`` for double JPEG whose first
pass was at 90), ``box`` / ``boxes`` / ``strokes`` (``box-10-20`` with
hole-ratio bins, in percent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..defaults import DEFAULTS, NOISE_PROTOCOL_ALIASES, NOISE_PROTOCOLS
from ..errors import ImageError, IraeError
from .jpeg import SUBSAMPLING, decode_file, jpeg_bytes
from .masks import MASK_KINDS, apply_holes, mask_in_range
from ..pixels import quantize_u8
from .noise import add_gaussian_noise
from .seeds import uniform

INPAINT_FILL = 0.5  # stored holed images are mid-grey inside the holes
# A mixed set (``--task auto``) holds noisy files, JPEGs and clean files; these are its default levels.
AUTO_SIGMAS = (5.0, 15.0, 25.0, 50.0)
AUTO_QUALITIES = (10, 30, 60, 90, 95)
CLEAN_LEVEL = "clean"  # a mixed set's clean members: the clean files themselves (task "none")


def noise_protocol(name: str) -> str:
    """The canonical name of a noise protocol (IraeError for an unknown one)."""
    name = NOISE_PROTOCOL_ALIASES.get(name, name)
    if name not in NOISE_PROTOCOLS:
        raise IraeError(f"--noise-protocol {name!r}: use clip (8-bit, as real noisy files are) or float "
                         f"(unclipped float32; 'paper' means the same)")
    return name


@dataclass(frozen=True)
class Level:
    """One degradation setting; every image gets one output per level."""

    name: str  # folder name in a test set, key in reports and training logs
    task: str
    params: dict  # fixed parameters; per-image draws are returned by ``draw``

    def draw(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """The random part for one clean (C, H, W) image -> (pixels, mask or None, drawn parameters).

        Denoise gives the unclipped noisy image, inpaint the holed image and its
        mask; JPEG has no random draws and returns ``x`` for the caller to encode.
        Raises ImageError when no mask in the level's hole range fits the image.
        """
        p = self.params
        if self.task == "none":
            return x, None, {}
        if self.task == "denoise":
            if "sigma" in p:
                sigma = float(p["sigma"])
                params = {"sigma": sigma}
            else:
                lo, hi = p["sigma_range"]
                sigma = uniform(lo, hi, g)
                params = {"sigma": sigma, "sigma_range": [lo, hi]}
            params["protocol"] = p["protocol"]
            return add_gaussian_noise(x, sigma, g), None, params
        if self.task == "jpeg":
            gray = x.shape[0] == 1
            return x, None, {"quality": p["quality"], "subsampling": None if gray else p["subsampling"],
                             "double_quality": p["double_quality"], "encoder": "pillow"}
        lo, hi = p["hole_range"]
        try:
            mask = mask_in_range(p["mask"], x.shape[-2], x.shape[-1], g, (lo, hi))
        except ValueError as e:
            raise ImageError(str(e)) from None
        fill = float(p["fill"])
        params = {"mask": p["mask"], "hole_range": [lo, hi], "hole_ratio": mask.float().mean().item(),
                  "fill": fill, "fill_u8": int(torch.round(torch.tensor(fill * 255.0)).item())}
        return apply_holes(x, mask, fill), mask, params

    def stored(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pixels, mask or None) that a test-set file of this level holds once decoded.

        ``x`` must already be 8-bit (``quantize_u8``), as test sets make it; the
        file round trip itself changes no pixel (8-bit PNG, float32 .npy, JPEG
        decoded by the same Pillow), so it is skipped.
        """
        pixels, mask, _ = self.draw(x, g)
        p = self.params
        if self.task == "none":
            return pixels, None
        if self.task == "denoise":
            return (pixels if p["protocol"] == "float" else quantize_u8(pixels)), None
        if self.task == "jpeg":
            return decode_file(self.jpeg_file(x))[0].to(device=x.device, dtype=x.dtype), None
        return pixels, mask

    def jpeg_file(self, x: torch.Tensor) -> bytes:
        """The file a test set of this JPEG level holds for the 8-bit (C, H, W) image ``x``."""
        p = self.params
        return jpeg_bytes(x, p["quality"], p["subsampling"], p["double_quality"])


def _num(v: float) -> str:
    return f"{v:g}"


def _check_options(task: str, given: dict) -> None:
    noise, jpeg = {"--sigma", "--noise-protocol"}, {"--quality", "--subsampling", "--double-quality"}
    own = {"denoise": noise, "jpeg": jpeg, "auto": noise | jpeg,
           "inpaint": {"--mask", "--hole-ratio", "--hole-bins"}}[task]
    stray = [k for k, v in given.items() if v is not None and k not in own]
    if stray:
        raise IraeError(f"{' and '.join(stray)} cannot be used with --task {task} "
                         f"(its options: {', '.join(sorted(own))})")


def _noise_levels(sigma, protocol) -> list[Level]:
    protocol = noise_protocol(protocol or DEFAULTS.noise_protocol)
    levels = []
    for lo, hi in sigma or [(s, s) for s in DEFAULTS.sigmas]:
        if lo < 0:
            raise IraeError(f"--sigma: {lo:g} is negative")
        if hi > 255:
            raise IraeError(f"--sigma {hi:g} is beyond the 0-255 scale (255 is already noise as strong as the "
                             f"whole range of an 8-bit image); give sigma on the 0-255 scale, e.g. 15,25,50")
        name = f"sigma{_num(lo)}" if lo == hi else f"sigma{_num(lo)}-{_num(hi)}"
        params = {"sigma": lo} if lo == hi else {"sigma_range": [lo, hi]}
        levels.append(Level(name, "denoise", {**params, "protocol": protocol}))
    return levels


def _jpeg_levels(quality, subsampling, double_quality) -> list[Level]:
    sub = subsampling or DEFAULTS.subsampling
    if sub not in SUBSAMPLING:
        raise IraeError(f"--subsampling {sub!r}: use one of {', '.join(SUBSAMPLING)}")
    qualities = quality or list(DEFAULTS.qualities)
    for q in [*qualities, *([double_quality] if double_quality is not None else [])]:
        if not 1 <= q <= 100:
            raise IraeError(f"JPEG quality {q} is outside 1-100")
    levels = []
    for q in qualities:
        name = f"q{q}"
        if sub != DEFAULTS.subsampling:
            name += "-" + sub.replace(":", "")
        if double_quality is not None:
            name += f"-dq{double_quality}"
        levels.append(Level(name, "jpeg", {"quality": int(q), "subsampling": sub, "double_quality": double_quality}))
    return levels


def _hole_levels(masks, hole_ratio, hole_bins) -> list[Level]:
    kinds = masks or list(DEFAULTS.masks)
    for kind in kinds:
        if kind not in MASK_KINDS:
            raise IraeError(f"--mask {kind!r}: use one of {', '.join(MASK_KINDS)}")
    if hole_bins and hole_ratio is not None:
        raise IraeError("give --hole-ratio or --hole-bins, not both")
    ranges = hole_bins or [hole_ratio or DEFAULTS.hole_range]
    for lo, hi in ranges:
        if not 0 < hi <= 1 or lo > hi:
            raise IraeError(f"hole ratio {lo:g}-{hi:g}: give fractions of the image, e.g. 0.1-0.3 for 10-30 %")
    return [Level(f"{kind}-{_num(lo * 100)}-{_num(hi * 100)}" if hole_bins else kind, "inpaint",
                  {"mask": kind, "hole_range": [lo, hi], "fill": INPAINT_FILL})
            for kind in kinds for lo, hi in ranges]


def _mixed_levels(sigma, protocol, quality, subsampling, double_quality) -> list[Level]:
    """A mixed set for ``--task auto``: each noise level, each JPEG quality, and the clean files as they are."""
    if protocol is not None and noise_protocol(protocol) != "clip":
        raise IraeError("--noise-protocol float does not go with --task auto: a mixed set holds files as users "
                        "have them (8-bit, clipped); drop the option")
    noisy = _noise_levels(sigma or [(s, s) for s in AUTO_SIGMAS], "clip")
    jpegs = _jpeg_levels(quality or list(AUTO_QUALITIES), subsampling, double_quality)
    return [*noisy, *jpegs, Level(CLEAN_LEVEL, "none", {})]


def build_levels(task: str, *, sigma: list[tuple[float, float]] | None = None, noise_protocol: str | None = None,
                 quality: list[int] | None = None, subsampling: str | None = None,
                 double_quality: int | None = None, masks: list[str] | None = None,
                 hole_ratio: tuple[float, float] | None = None,
                 hole_bins: list[tuple[float, float]] | None = None) -> list[Level]:
    """Levels for ``task`` from the user's options (None = the defaults); IraeError on bad options.

    Options of another task are refused by their flag name, so callers can show the message as it is.
    """
    given = {"--sigma": sigma, "--noise-protocol": noise_protocol, "--quality": quality,
             "--subsampling": subsampling, "--double-quality": double_quality, "--mask": masks,
             "--hole-ratio": hole_ratio, "--hole-bins": hole_bins}
    if task not in ("denoise", "jpeg", "inpaint", "auto"):
        raise IraeError(f"unknown task {task!r}; use one of: denoise, jpeg, inpaint, auto")
    _check_options(task, given)
    if task == "auto":
        levels = _mixed_levels(sigma, noise_protocol, quality, subsampling, double_quality)
    elif task == "denoise":
        levels = _noise_levels(sigma, noise_protocol)
    elif task == "jpeg":
        levels = _jpeg_levels(quality, subsampling, double_quality)
    else:
        levels = _hole_levels(masks, hole_ratio, hole_bins)
    unique: dict[str, Level] = {}
    for level in levels:
        unique.setdefault(level.name, level)  # "--sigma 25,25" means one level
    return list(unique.values())
