"""Image files out: the output extension, encoding with the source's meta, atomic writes.

``write_image`` takes the ``ImageMeta`` that ``imageio.read_image`` returned,
so grayscale stays grayscale, alpha is carried through untouched, 16-bit
stays 16-bit and the colour profile and EXIF survive.  Every write goes to a
temp file in the target folder and is renamed into place, so an interrupted
run never leaves a half-written image.

Pillow cannot write 16-bit colour PNGs, so those go through the small PNG
encoder here.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ImageError
from .files import atomic_write_bytes
from .imageio import PNG_SIGNATURE, ImageMeta
from .pixels import to_u8

FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}
PIL_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
              ".bmp": "BMP"}
# Image types users meet that irae does not write: an OUTPUT file named so is a mistake, not a folder name.
UNWRITABLE_IMAGE_SUFFIXES = {".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico"}


def output_suffix(source_suffix: str, fmt: str = "same") -> str:
    """File extension for an output: ``same`` keeps a writable input extension (PNG otherwise)."""
    if fmt == "same":
        return source_suffix if source_suffix.lower() in PIL_FORMAT else ".png"
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt == "tif":
        fmt = "tiff"
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use same, {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _icc_fits(icc: bytes | None, channels: int) -> bool:
    """An ICC profile is only embedded when its colour space matches the pixels written."""
    if not icc or len(icc) < 20:
        return False
    space = icc[16:20]
    return space == (b"GRAY" if channels == 1 else b"RGB ")


def _alpha8(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha
    return np.round(alpha.astype(np.float32) / 257.0).astype(np.uint8)


def _to_pil(x: torch.Tensor, meta: ImageMeta, out_format: str) -> Image.Image:
    x = x.detach().float().cpu()  # clamped below, by the conversion each path makes
    sixteen = meta.bits == 16 and out_format in ("PNG", "TIFF") and x.shape[0] == 1 and meta.alpha is None
    if sixteen:
        arr = np.round(x[0].clamp(0, 1).numpy() * 65535.0).astype(np.uint16)
        return Image.fromarray(arr)
    img = Image.fromarray(np.ascontiguousarray(to_u8(x)))
    if meta.alpha is not None and out_format in ("PNG", "WEBP", "TIFF"):
        if img.mode == "L" and out_format == "WEBP":
            img = img.convert("RGB")
        img.putalpha(Image.fromarray(_alpha8(meta.alpha)))
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(arr: np.ndarray, *, icc_profile: bytes | None = None, exif: bytes | None = None,
                 compress_level: int = 1) -> bytes:
    """(H, W, C) uint16 with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) -> 16-bit PNG bytes."""
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8)
    bpp = 2 * c
    # "Sub" filter on every row: cheap with numpy and compresses far better than no filter.
    filtered = rows.copy()
    filtered[:, bpp:] = rows[:, bpp:] - rows[:, :-bpp]
    raw = np.empty((h, 1 + rows.shape[1]), np.uint8)
    raw[:, 0] = 1
    raw[:, 1:] = filtered
    out = [PNG_SIGNATURE, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    if icc_profile:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    out.append(_png_chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def encode_image(x: torch.Tensor, meta: ImageMeta, suffix: str, *, quality: int = 95,
                 png_compress_level: int = 1) -> bytes:
    """Encode (C, H, W) in [0, 1] for a file ending in ``suffix``; returns the bytes."""
    fmt = PIL_FORMAT.get(suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot write {suffix!r} files; use one of png, jpg, webp, tiff")
    channels = int(x.shape[0])
    icc = meta.icc_profile if _icc_fits(meta.icc_profile, channels) else None
    if fmt == "PNG" and meta.bits == 16 and (channels == 3 or meta.alpha is not None):
        planes = np.round(x.detach().float().clamp(0, 1).cpu().numpy() * 65535.0).astype(np.uint16)
        arr = planes.transpose(1, 2, 0)
        if meta.alpha is not None:
            alpha = meta.alpha if meta.alpha.dtype == np.uint16 else meta.alpha.astype(np.uint16) * 257
            arr = np.concatenate([arr, alpha[:, :, None]], axis=2)
        return encode_png16(arr, icc_profile=icc, exif=meta.exif, compress_level=png_compress_level)
    img = _to_pil(x, meta, fmt)
    kwargs: dict = {}
    if icc and fmt != "BMP":
        kwargs["icc_profile"] = icc
    if meta.exif and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["exif"] = meta.exif
    if fmt == "PNG":
        kwargs["compress_level"] = png_compress_level
    elif fmt == "JPEG":
        kwargs["quality"] = quality
        if img.mode == "RGBA":  # JPEG has no alpha; keep the colour
            img = img.convert("RGB")
    elif fmt == "WEBP":
        kwargs["quality"] = quality
    elif fmt == "TIFF":
        kwargs["compression"] = "tiff_deflate"
    elif fmt == "BMP" and img.mode == "LA":
        img = img.convert("RGBA")
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **kwargs)
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot encode {img.mode} image as {fmt} ({e}); choose another --format") from None
    return buf.getvalue()


def write_image(path: str | Path, x: torch.Tensor, meta: ImageMeta, *, quality: int = 95,
                png_compress_level: int = 1, overwrite: bool = False) -> None:
    path = Path(path)
    atomic_write_bytes(path, encode_image(x, meta, path.suffix, quality=quality,
                                          png_compress_level=png_compress_level), overwrite=overwrite)

