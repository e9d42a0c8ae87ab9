"""Handing plain JPEG files to nvJPEG: which files qualify, and the batched CUDA decode.

Only files the GPU decoder reads exactly as Pillow would are sent there
(complete, RGB or gray, no EXIF rotation); everything else goes through
``imageio.read_image``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .degradations.jpeg import estimate_quality
from .errors import ImageError
from .imageio import ImageMeta, exif_without_orientation, open_image
from .jpegcheck import scan_shortfall


def jpeg_is_complete(data: bytes) -> bool:
    """An end-of-image marker after the last start-of-scan: the file was not cut short.

    Entropy-coded data never holds FF D9 (every FF in it is stuffed), so a marker found after the
    last scan header is the real end; an EXIF thumbnail's own end comes before that header.
    """
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos + 2) >= 0


def jpeg_for_gpu(path: str | Path) -> tuple[bytes, ImageMeta, tuple[int, int, int]] | None:
    """Bytes, meta and (C, H, W) of a plain baseline/progressive RGB or gray JPEG for nvJPEG; None otherwise.

    Only the header is parsed here; anything unusual (CMYK, odd modes) is left to Pillow.
    """
    path = Path(path)
    try:
        img = open_image(path, load=False)
    except ImageError:
        return None
    with img:
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        exif, orientation = exif_without_orientation(img, path)
        # nvJPEG does not apply EXIF orientation (torchvision implements it on the CPU
        # only), so rotated or mirrored files go through Pillow.
        if orientation not in (None, 1):
            return None
        w, h = img.size
        mode, icc, quality = img.mode, img.info.get("icc_profile"), estimate_quality(img)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not jpeg_is_complete(data) or scan_shortfall(data) is not None:
        return None  # nvJPEG decodes a cut file without complaint; Pillow names the problem
    meta = ImageMeta(mode=mode, bits=8, icc_profile=icc, exif=exif, format="JPEG", jpeg_quality=quality)
    return data, meta, (1 if mode == "L" else 3, h, w)


def decode_jpegs_cuda(blobs: list[bytes], gray: list[bool], device: torch.device) -> list[torch.Tensor]:
    """Batched nvJPEG decode -> list of (C, H, W) uint8 CPU tensors (files without EXIF rotation only).

    The pixels cross to the host as uint8 (a quarter of float32's bytes); the caller makes them float.
    """
    import torchvision.io as tio

    out = []
    for want_gray in (False, True):
        idx = [i for i, g in enumerate(gray) if g == want_gray]
        if not idx:
            continue
        mode = tio.ImageReadMode.GRAY if want_gray else tio.ImageReadMode.RGB
        data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in idx]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = tio.decode_jpeg(data, mode=mode, device=device)
        out.extend(zip(idx, decoded))
    out.sort(key=lambda t: t[0])
    return [t.cpu() for _, t in out]
