"""``--task auto``: which task, if any, a file goes to, and why.

A JPEG at or below the quality the shipped JPEG weights were measured to improve
(their ``max_quality``) goes to the JPEG model, and one above it is copied as it is;
any other file whose estimated noise sigma is at or above ``DENOISE_FROM_SIGMA``
goes to the denoiser; anything else is copied as it is.  Inpainting is never chosen: it needs a mask.  The same
rule routes files in ``irae restore`` and states the right route of a test-set
file in ``irae benchmark quality --task auto`` (docs/auto.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import IraeError

AUTO = "auto"
# The denoiser is used from this estimated sigma (0-255 scale) up.  Measured on the validation crops
# (docs/auto.md): from sigma 4 the shipped denoiser beats its input (RGB PSNR), at 3 it does not.
DENOISE_FROM_SIGMA = 4.0
JPEG_SUFFIXES = (".jpg", ".jpeg")
COPIED = "copied"


@dataclass(frozen=True)
class Route:
    task: str | None  # "jpeg", "denoise", or None: the file is copied as it is
    reason: str  # what decided it, for the report and the progress display
    jpeg_quality: int | None = None
    sigma: float | None = None  # estimated noise, 0-255 scale (None when the JPEG quality decided)

    @property
    def name(self) -> str:
        return self.task or COPIED

    def describe(self) -> str:
        """E.g. ``quality 23 -> jpeg``, ``sigma ~ 18.2 -> denoise``, ``clean (sigma ~ 1.1) -> copied``."""
        return f"{self.reason} -> {self.name}"

    def fields(self) -> dict:
        """The report line's keys for this route."""
        return {"route": self.name, "route_reason": self.describe(), "jpeg_quality": self.jpeg_quality,
                "sigma_estimate": None if self.sigma is None else round(self.sigma, 2)}


def jpeg_route(jpeg_quality: int | None, max_quality: int | None) -> Route | None:
    """The JPEG model's route when the quality alone decides it (read from the header, before any pixel)."""
    if jpeg_quality is not None and max_quality is not None and jpeg_quality <= max_quality:
        return Route("jpeg", f"quality {jpeg_quality}", jpeg_quality=jpeg_quality)
    return None


def route(jpeg_quality: int | None, max_quality: int | None, sigma: float | None,
          threshold: float = DENOISE_FROM_SIGMA) -> Route:
    """The route of one file from its JPEG quality (None for no JPEG) and its estimated noise sigma."""
    by_quality = jpeg_route(jpeg_quality, max_quality)
    if by_quality is not None:
        return by_quality
    if jpeg_quality is not None:
        # Kept as it is, noisy or not: a JPEG's own in-block error reads as sigma 4-5 on fine texture
        # (docs/auto.md), so the estimate cannot tell a clean high-quality JPEG from a mildly noisy one.
        return Route(None, f"quality {jpeg_quality} above {max_quality}", jpeg_quality=jpeg_quality)
    if sigma is not None and sigma >= threshold:
        return Route("denoise", f"sigma ~ {sigma:.1f}", sigma=sigma)
    noise = f"sigma ~ {sigma:.1f}" if sigma is not None else "no noise measured"
    return Route(None, f"clean ({noise})", sigma=sigma)


def right_route(task: str, params: dict, max_quality: int | None, threshold: float = DENOISE_FROM_SIGMA) -> str:
    """The route a test-set file should take, from the truth its manifest line holds (``task``, ``params``):
    the rule above applied to the real quality and noise instead of the measured ones."""
    if task == "jpeg" and jpeg_route(params.get("quality"), max_quality) is not None:
        return "jpeg"
    if task == "denoise" and params.get("sigma", 0.0) >= threshold:
        return "denoise"
    return COPIED


def header_quality(path: Path) -> int | None:
    """A JPEG file's quality from its quantisation tables (header only); None for other files or no header."""
    from .degradations import estimate_quality
    from .errors import ImageError
    from .imageio import open_image

    if path.suffix.lower() not in JPEG_SUFFIXES:
        return None
    try:
        with open_image(path, load=False) as img:
            return estimate_quality(img)
    except ImageError:
        return None  # the read reports it, as any other undecodable file


def jpeg_max_quality() -> int | None:
    """``max_quality`` of the shipped JPEG weights (None: they improve every quality), from their metadata."""
    from .weights import read_task_params, require_default_weights

    value = read_task_params(require_default_weights("jpeg")).get("max_quality")
    if value is not None and not isinstance(value, int):
        raise IraeError(f"the shipped JPEG weights have an invalid max_quality {value!r}; reinstall irae")
    return value


def check_weights() -> int | None:
    """Before any work: both tasks' shipped weights are there; -> the JPEG weights' max_quality."""
    from .weights import require_default_weights, resolve

    for task in ("denoise", "jpeg"):
        resolve(require_default_weights(task))
    return jpeg_max_quality()
