"""Image files in and out: discovery, decoding with metadata, masks, atomic encoding.

``read_image`` returns the colour planes as a float tensor in [0, 1] plus an
``ImageMeta`` that remembers what the file was (mode, bit depth, alpha, ICC
profile, EXIF); ``write_image`` takes that meta back so grayscale stays
grayscale, alpha is carried through untouched, 16-bit stays 16-bit and the
colour profile and EXIF survive.  Every write goes to a temp file in the
target folder and is renamed into place, so an interrupted run never leaves a
half-written image.

Pillow decodes 16-bit colour PNGs to 8 bits and cannot write them, so those
are read with torchvision and written by a small PNG encoder here.
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, one_line
from .files import IMAGE_EXTENSIONS, atomic_write_bytes

FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}
PIL_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
              ".bmp": "BMP"}
# Pillow refuses headers above twice its own limit; anything above that is treated as a decompression bomb.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# Mask files and alpha-as-mask: a value at or above half scale means "missing" (255 = missing in 8-bit files).
MASK_THRESHOLD = 0.5
ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_MODES = ("L", "LA", "I;16", "I;16B", "I;16L", "I", "1")


# --- warnings ------------------------------------------------------------------------------------

_warned: set[str] = set()
_warn_lock = threading.Lock()
_warning_handler = None  # callable(line) set by a command that prints around a progress bar


def set_warning_handler(handler) -> object:
    """Route ``warn`` lines through ``handler(line)`` (None = stderr); returns the previous handler."""
    global _warning_handler
    previous, _warning_handler = _warning_handler, handler
    return previous


def warn(message: str) -> None:
    """One line ``irae: warning: MESSAGE`` on stderr, once per message per process (thread-safe)."""
    line = one_line(f"irae: warning: {message}")
    with _warn_lock:
        if line in _warned:
            return
        _warned.add(line)
    handler = _warning_handler
    if handler is not None:
        handler(line)
    else:
        print(line, file=sys.stderr, flush=True)


@dataclass
class ImageMeta:
    mode: str  # Pillow mode of the file as decoded ("RGB", "L", "RGBA", "I;16", ...)
    bits: int  # 8 or 16 per channel
    alpha: np.ndarray | None = None  # H x W, uint8 or uint16 like the image, carried through untouched
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None  # Pillow format name of the source

    @property
    def gray(self) -> bool:
        return self.mode in _GRAY_MODES


def _decode_failure(path: Path, e: Exception) -> ImageError:
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        return ImageError(f"{path}: empty file (0 bytes); not an image")
    if isinstance(e, UnidentifiedImageError):
        return ImageError(f"{path}: not an image file Pillow can read (wrong extension or corrupt header)")
    reason = str(e).split("\n")[0] or type(e).__name__
    return ImageError(f"{path}: cannot decode image ({reason}); the file may be truncated or not an image")


def _open(path: Path, load: bool = True) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own size check below is the limit; Pillow's warning threshold is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} is larger than {MAX_PIXELS // 10**6} MP; "
                                 f"refusing to decode (possible decompression bomb)")
            if load:
                img.load()
        return img
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: image header claims a huge size (possible decompression bomb); skipped") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found (a broken link?)") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; make it readable") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise _decode_failure(path, e) from None


def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, or None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, ...) array, as ImageOps.exif_transpose does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def exif_orientation(img: Image.Image, path: str | Path) -> int:
    """The EXIF orientation (1-8) of an open image: the one place irae reads it, for every command.

    A malformed tag (text, a list, a number outside 1-8) is ignored -- the pixels
    are used as stored -- with one warning naming the file; 0, which some
    cameras write for "unknown", means 1 silently.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own two-line "Metadata Warning"s about odd tags
            value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF is like no EXIF: the pixels are what counts
        warn(f"{path}: unreadable EXIF data; ignored (orientation not applied)")
        return 1
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 8:
        return value or 1
    warn(f"{path}: malformed EXIF orientation {value!r:.40}; ignored, the image is used as stored")
    return 1


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """Turn an image upright for an orientation from ``exif_orientation`` (as ImageOps.exif_transpose would)."""
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def upright(img: Image.Image, path: str | Path) -> Image.Image:
    """``img`` with its EXIF orientation applied (a malformed tag is ignored with a warning)."""
    return apply_orientation(img, exif_orientation(img, path))


def _exif_without_orientation(img: Image.Image, path: str | Path = "") -> tuple[bytes | None, int]:
    """(EXIF bytes without the orientation tag, orientation) of an open image.

    The image's own EXIF object is edited (the pixels are stored upright in the
    output, so the tag must go); EXIF that cannot be written back is dropped
    with a warning rather than failing the image.
    """
    orientation = exif_orientation(img, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = img.getexif()
            if not len(exif):
                return None, orientation
            if ORIENTATION in exif:
                del exif[ORIENTATION]
            return (exif.tobytes() if len(exif) else None), orientation
    except Exception:  # noqa: BLE001 - a malformed tag Pillow cannot re-encode
        warn(f"{path}: EXIF data cannot be copied (malformed tags); the output is written without it")
        return None, orientation


def _read_png16_colour(path: Path) -> tuple[torch.Tensor, ImageMeta]:
    """16-bit RGB / RGBA / gray+alpha PNG, kept at 16 bits (Pillow would truncate it to 8)."""
    import torchvision.io as tio

    with _open(path, load=False) as img:
        info = dict(img.info)
        _refuse_frames(img, path)
        exif, orientation = _exif_without_orientation(img, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29+ points to torchcodec
            data = tio.decode_png(tio.read_file(str(path)), mode=tio.ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise _decode_failure(path, e) from None
    arr = data.permute(1, 2, 0).numpy()
    if arr.dtype != np.uint16:  # torchvision versions without 16-bit support hand back 8 bits
        arr = arr.astype(np.uint16) * 257
    arr = _orient(arr, orientation)
    c = arr.shape[2]
    colour = arr[:, :, : (3 if c >= 3 else 1)]
    alpha = np.ascontiguousarray(arr[:, :, -1]) if c in (2, 4) else None
    mode = ("RGB" if c >= 3 else "L") + ("A" if alpha is not None else "")
    planes = colour.transpose(2, 0, 1).astype(np.float32) / 65535.0
    meta = ImageMeta(mode=mode, bits=16, alpha=alpha, icc_profile=info.get("icc_profile"), exif=exif, format="PNG")
    return torch.from_numpy(np.ascontiguousarray(planes)), meta


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Use the embedded CMYK profile when there is one; a naive conversion otherwise."""
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to the plain conversion
            pass
    return img.convert("RGB")


def _refuse_frames(img: Image.Image, path: Path) -> None:
    """Animated GIF/PNG/WebP and multi-page TIFF: refused, never silently cut to the first frame."""
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - a broken frame table: let decoding say what is wrong
        return
    if frames > 1 and img.format != "MPO":  # MPO: a JPEG whose extra frames are previews / depth maps
        kind = "pages" if img.format == "TIFF" else "frames"
        raise ImageError(f"{path}: has {frames} {kind} ({img.format}); irae restores single images only and "
                         f"will not drop {kind} silently -- split it into one file per {kind[:-1]} first")


def read_image(path: str | Path) -> tuple[torch.Tensor, ImageMeta]:
    """Decode ``path`` -> (C, H, W) float32 in [0, 1] with C = 1 or 3, and its meta.

    EXIF orientation is applied (the pixels come back upright and the tag is
    dropped from the meta; a malformed tag is ignored with a warning); palette
    images become RGB(A); CMYK becomes RGB; alpha is split off into
    ``meta.alpha``; animated and multi-page files are refused.  Any failure is
    an ``ImageError`` with one line naming the file.
    """
    path = Path(path)
    try:
        return _read_image(path)
    except (ImageError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a decoder's surprise on one odd file is that file's problem
        raise _decode_failure(path, e) from None


def _read_image(path: Path) -> tuple[torch.Tensor, ImageMeta]:
    ihdr = _png_ihdr(path)
    if ihdr is not None and ihdr[0] == 16 and ihdr[1] in (2, 4, 6):
        try:
            return _read_png16_colour(path)
        except (ImportError, AttributeError):
            pass  # no torchvision PNG decoder: Pillow reads it at 8 bits
    img = _open(path, load=False)
    _refuse_frames(img, path)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise _decode_failure(path, e) from None
    fmt = img.format
    icc = img.info.get("icc_profile")
    exif_bytes, orientation = _exif_without_orientation(img, path)
    img = apply_orientation(img, orientation)
    mode = img.mode
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float32)
        bits = 16
        planes = np.clip(arr, 0, 65535)[None] / 65535.0
        mode = "I;16"
    else:
        bits = 8
        if mode == "P" or mode == "PA":
            img = img.convert("RGBA" if ("transparency" in img.info or mode == "PA") else "RGB")
        elif mode == "CMYK":
            img = _cmyk_to_rgb(img, icc)
            icc = None  # a CMYK profile does not describe the RGB pixels
        elif mode == "YCbCr":
            img = img.convert("RGB")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("RGBa", "La"):  # premultiplied alpha
            img = img.convert("RGBA" if mode == "RGBa" else "LA")
        elif mode not in ("RGB", "RGBA", "L", "LA"):
            raise ImageError(f"{path}: unsupported pixel mode {mode!r}; convert it to RGB or grayscale first")
        if img.mode in ("RGBA", "LA"):
            alpha = np.asarray(img.getchannel("A")).copy()
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        arr = np.asarray(img).astype(np.float32) / 255.0
        planes = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        mode = img.mode if alpha is None else img.mode + "A"
    meta = ImageMeta(mode=mode, bits=bits, alpha=alpha, icc_profile=icc, exif=exif_bytes, format=fmt)
    return torch.from_numpy(np.ascontiguousarray(planes)), meta


def image_size(path: str | Path) -> tuple[int, int, int] | None:
    """(channels, height, width) as ``read_image`` would return them, from the header only; None if unreadable."""
    path = Path(path)
    try:
        with _open(path, load=False) as img:
            w, h = img.size
            if exif_orientation(img, path) in (5, 6, 7, 8):
                w, h = h, w
            return (1 if img.mode in _GRAY_MODES else 3), h, w
    except (ImageError, OSError, ValueError, SyntaxError, struct.error, EOFError):
        return None


def image_pixels(path: str | Path) -> int | None:
    """Width x height from the header alone, silently (no EXIF read, no warning); None if unreadable."""
    try:
        with _open(Path(path), load=False) as img:
            return img.size[0] * img.size[1]
    except (ImageError, OSError, ValueError, SyntaxError, struct.error, EOFError):
        return None


# --- masks ---------------------------------------------------------------------------------------

def find_mask(mask_root: str | Path, rel: Path) -> Path | None:
    """The mask for input ``rel``: same relative path under ``mask_root``, any image extension."""
    folder = Path(mask_root) / rel.parent
    exact = folder / rel.name
    if exact.is_file():
        return exact
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        p = Path(name)
        if p.stem == rel.stem and p.suffix.lower() in IMAGE_EXTENSIONS and (folder / name).is_file():
            return folder / name
    return None


def read_mask(path: str | Path, size: tuple[int, int], image: str | Path = "") -> torch.Tensor:
    """Mask file -> bool (1, H, W), True = missing (values >= half scale; 255 in 8-bit files).

    ``size`` is the image's (H, W); a mask of another size is an ``ImageError``.
    """
    path = Path(path)
    img = _open(path)
    _refuse_frames(img, path)
    img = upright(img, path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        values, full = np.asarray(img).astype(np.float32), 65535
    else:
        if img.mode == "P":
            img = img.convert("RGB")
        values, full = np.asarray(img.convert("L")), 255
    missing = values >= round(MASK_THRESHOLD * full)
    _warn_partial(path, values, full, "mask")
    h, w = missing.shape
    if (h, w) != tuple(size):
        about = f" but {image} is {size[1]}x{size[0]}" if image else f", expected {size[1]}x{size[0]}"
        raise ImageError(f"{path}: mask is {w}x{h}{about}; masks must have the image's size")
    return torch.from_numpy(missing.copy())[None]


def mask_from_alpha(meta: ImageMeta, path: str | Path = "") -> torch.Tensor:
    """Transparent pixels (alpha below half) are the holes: bool (1, H, W), True = missing."""
    if meta.alpha is None:
        raise ImageError(f"{path}: has no alpha channel; --mask-from alpha needs transparent holes "
                         f"(or give mask files with --masks)")
    full = 65535 if meta.alpha.dtype == np.uint16 else 255
    _warn_partial(path, meta.alpha, full, "alpha")
    return torch.from_numpy(np.asarray(meta.alpha).astype(np.float32) < MASK_THRESHOLD * full)[None]


def _warn_partial(path: str | Path, values: np.ndarray, full: int, what: str) -> None:
    """Masks are meant to be 0 or full scale; say once per file how values in between were read."""
    between = int(np.count_nonzero((values > 0) & (values < full)))
    if between:
        half = round(MASK_THRESHOLD * full)
        rule = (f"values >= {half} are holes" if what == "mask" else
                f"alpha below {half} is a hole")
        warn(f"{path}: {between} {what} pixel(s) lie between 0 and {full} (anti-aliased or lossy?); {rule}")


# --- writing -------------------------------------------------------------------------------------

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
    x = x.detach().float().clamp(0, 1).cpu()
    sixteen = meta.bits == 16 and out_format in ("PNG", "TIFF") and x.shape[0] == 1 and meta.alpha is None
    if sixteen:
        arr = np.round(x[0].numpy() * 65535.0).astype(np.uint16)
        return Image.fromarray(arr)
    arr = np.round(x.numpy() * 255.0).astype(np.uint8)
    img = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
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
    out = [_PNG_SIGNATURE, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
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


# --- CUDA JPEG decoding --------------------------------------------------------------------------

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
        img = _open(path, load=False)
    except ImageError:
        return None
    with img:
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        exif, orientation = _exif_without_orientation(img, path)
        # nvJPEG does not apply EXIF orientation (torchvision implements it on the CPU
        # only), so rotated or mirrored files go through Pillow.
        if orientation not in (None, 1):
            return None
        w, h = img.size
        mode, icc = img.mode, img.info.get("icc_profile")
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not jpeg_is_complete(data):
        return None  # nvJPEG decodes a cut file without complaint; Pillow names the problem
    meta = ImageMeta(mode=mode, bits=8, icc_profile=icc, exif=exif, format="JPEG")
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
