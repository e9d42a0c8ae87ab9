"""Image files in: decoding with metadata, EXIF orientation, header-only sizes.

``read_image`` returns the colour planes as a float tensor in [0, 1] plus an
``ImageMeta`` that remembers what the file was (mode, bit depth, alpha, ICC
profile, EXIF); ``imagewrite.write_image`` takes that meta back.  Mask files
are read in ``maskio``; plain JPEGs for the GPU decoder are picked in
``gpu_jpeg``.  Every reader opens files through ``open_image``, so the
size limit and the one-line error messages are the same everywhere.

Pillow decodes 16-bit colour PNGs to 8 bits, so those are read with
torchvision.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .degradations.jpeg import estimate_quality
from .errors import ImageError, warn
from .jpegcheck import scan_shortfall
from .pixels import planes_from_u8

# Pillow refuses headers above twice its own limit; anything above that is treated as a decompression bomb.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
ORIENTATION = 0x0112
# TIFF tags that describe how a file stores its pixels, not the photo.  Pillow's getexif() of a TIFF holds
# them beside the real EXIF, and a TIFF writer given them as EXIF would describe the new file wrongly
# (ExtraSamples of an RGBA input on an RGB output, a CMYK input's photometric, strip offsets) and make
# it unreadable.  The ICC profile (34675) travels on its own, checked against the pixels written.
LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281,
                         284, 288, 289, 290, 291, 292, 293, 297, 317, 320, 321, 322, 323, 324, 325, 330, 332,
                         334, 338, 339, 340, 341, 347, *range(512, 522), 529, 530, 531, 532, 34675, 37724})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_MODES = ("L", "LA", "I;16", "I;16B", "I;16L", "I", "1")


@dataclass
class ImageMeta:
    mode: str  # Pillow mode of the file as decoded ("RGB", "L", "RGBA", "I;16", ...)
    bits: int  # 8 or 16 per channel
    alpha: np.ndarray | None = None  # H x W, uint8 or uint16 like the image, carried through untouched
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None  # Pillow format name of the source
    jpeg_quality: int | None = None  # a JPEG source's quality, read from its quantisation tables
    # where a JPEG source's 8x8 blocks start (rows, columns) once it is turned upright (jpeg_grid_upright)
    jpeg_grid: tuple[int, int] = (0, 0)

    @property
    def gray(self) -> bool:
        return self.mode in _GRAY_MODES

    @property
    def header_grid(self) -> tuple[int, int] | None:
        """``jpeg_grid`` where the file's header vouches for it (a JPEG source), else None: the pixels decide."""
        return self.jpeg_grid if self.jpeg_quality is not None else None


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


def open_image(path: Path, load: bool = True, warn_pillow: bool = True) -> Image.Image:
    """Open an image file the one way irae does: a size limit against decompression bombs, and every
    failure an ``ImageError`` with one line naming the file (``load=False``: the header only).

    Pillow's own warnings (damaged EXIF read with the header, ...) become one ``irae: warning:`` line
    naming the file (``warn_pillow=False``: dropped, for header peeks that a full read repeats)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = Image.open(path)
            try:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {img.width}x{img.height} is larger than {MAX_PIXELS // 10**6} MP; "
                                     f"refusing to decode (possible decompression bomb)")
                if load:
                    load_pixels(img, path)
            except BaseException:
                img.close()  # else the collector closes it later, warning in the middle of another file's read
                raise
        if warn_pillow:
            _say_pillow_warnings(caught, path)
        return img
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: image header claims a huge size (possible decompression bomb)") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found (a broken link?)") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; make it readable") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise _decode_failure(path, e) from None


def load_pixels(img: Image.Image, path: Path) -> None:
    """Decode an opened image; a JPEG whose scans are too short for its claimed size is refused first, as
    damaged, instead of being decoded into filler (jpegcheck.py)."""
    if img.format in ("JPEG", "MPO"):
        refuse_damaged_jpeg(path)
    img.load()


def refuse_damaged_jpeg(path: Path) -> None:
    """ImageError when ``path`` is a JPEG whose scans cannot hold the size its header claims; nothing for
    any other file."""
    short = scan_shortfall(path)
    if short is not None:
        raise ImageError(f"{path}: damaged JPEG: its header claims {short.width}x{short.height} "
                         f"({short.width * short.height / 1e6:.1f} MP) but its scan data ends after "
                         f"{short.have_bytes} bytes, far short of the {short.need_bytes} it needs; the file is "
                         f"truncated or its header is wrong")


def _say_pillow_warnings(caught: list, path: Path) -> None:
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            continue  # our own size check is the limit; Pillow's warning threshold is lower
        if issubclass(w.category, ResourceWarning):
            continue  # the collector closing some earlier object, not a flaw of this file
        text = str(w.message).splitlines()[0].strip().rstrip(".") if str(w.message).strip() else "a warning"
        exif = "TiffImagePlugin" in (w.filename or "")
        warn(f"{path}: {'damaged EXIF data' if exif else 'Pillow'} ({text}); "
             f"{'ignored, the pixels are read as stored' if exif else 'the image is read as Pillow decodes it'}")


def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, or None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
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


def jpeg_grid_upright(orientation: int, width: int, height: int) -> tuple[int, int]:
    """Where the 8x8 blocks of a stored ``width`` x ``height`` JPEG start (rows, columns) once its EXIF
    ``orientation`` is applied: a flip or a turn moves a side's far edge to the corner, so the blocks
    then start at that side's length modulo 8."""
    w, h = width % 8, height % 8
    return {2: (0, w), 3: (h, w), 4: (h, 0), 6: (0, h), 7: (w, h), 8: (w, 0)}.get(orientation, (0, 0))


def apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """Turn an image upright for an orientation from ``exif_orientation`` (as ImageOps.exif_transpose would)."""
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def upright(img: Image.Image, path: str | Path) -> Image.Image:
    """``img`` with its EXIF orientation applied (a malformed tag is ignored with a warning)."""
    return apply_orientation(img, exif_orientation(img, path))


def exif_without_orientation(img: Image.Image, path: str | Path = "") -> tuple[bytes | None, int]:
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
            for tag in [t for t in exif if t == ORIENTATION or t in LAYOUT_TAGS]:
                del exif[tag]
            return (exif.tobytes() if len(exif) else None), orientation
    except Exception:  # noqa: BLE001 - a malformed tag Pillow cannot re-encode
        warn(f"{path}: EXIF data cannot be copied (malformed tags); the output is written without it")
        return None, orientation


def _read_png16_colour(path: Path) -> tuple[torch.Tensor, ImageMeta]:
    """16-bit RGB / RGBA / gray+alpha PNG, kept at 16 bits (Pillow would truncate it to 8)."""
    import torchvision.io as tio

    with open_image(path, load=False) as img:
        info = dict(img.info)
        refuse_frames(img, path)
        exif, orientation = exif_without_orientation(img, path)
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


def refuse_frames(img: Image.Image, path: Path) -> None:
    """Animated GIF/PNG/WebP and multi-page TIFF: refused, never silently cut to the first frame."""
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - a broken frame table: let decoding say what is wrong
        return
    if frames > 1 and img.format != "MPO":  # MPO: a JPEG whose extra frames are previews / depth maps
        kind = "pages" if img.format == "TIFF" else "frames"
        raise ImageError(f"{path}: has {frames} {kind} ({img.format}); irae reads single images only and "
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
    img = open_image(path, load=False)
    refuse_frames(img, path)
    try:
        load_pixels(img, path)
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise _decode_failure(path, e) from None
    fmt = img.format
    quality = estimate_quality(img)  # None unless it has JPEG tables (JPEG, or a camera's MPO)
    icc = img.info.get("icc_profile")
    exif_bytes, orientation = exif_without_orientation(img, path)
    grid = jpeg_grid_upright(orientation, *img.size) if quality is not None else (0, 0)
    img = apply_orientation(img, orientation)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        planes = np.clip(np.asarray(img).astype(np.float32), 0, 65535)[None] / 65535.0
        mode, bits, alpha = "I;16", 16, None
    else:
        planes, mode, alpha, icc = _planes_8bit(img, icc, path)
        bits = 8
    meta = ImageMeta(mode=mode, bits=bits, alpha=alpha, icc_profile=icc, exif=exif_bytes, format=fmt,
                     jpeg_quality=quality, jpeg_grid=grid)
    return torch.from_numpy(np.ascontiguousarray(planes)), meta


def _planes_8bit(img: Image.Image, icc: bytes | None,
                 path: Path) -> tuple[np.ndarray, str, np.ndarray | None, bytes | None]:
    """(planes in [0, 1], mode as ``ImageMeta`` records it, alpha, ICC profile that still fits) of an 8-bit image."""
    mode = img.mode
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
    alpha = None
    if img.mode in ("RGBA", "LA"):
        alpha = np.asarray(img.getchannel("A")).copy()
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    return planes_from_u8(np.asarray(img)), (img.mode if alpha is None else img.mode + "A"), alpha, icc


def image_size(path: str | Path) -> tuple[int, int, int] | None:
    """(channels, height, width) as ``read_image`` would return them, from the header only; None if unreadable."""
    path = Path(path)
    try:
        with open_image(path, load=False) as img:
            w, h = img.size
            if exif_orientation(img, path) in (5, 6, 7, 8):
                w, h = h, w
            return (1 if img.mode in _GRAY_MODES else 3), h, w
    except (ImageError, OSError, ValueError, SyntaxError, struct.error, EOFError):
        return None


def image_pixels(path: str | Path) -> int | None:
    """Width x height from the header alone, silently (no EXIF read, no warning); None if unreadable."""
    try:
        with open_image(Path(path), load=False, warn_pillow=False) as img:
            return img.size[0] * img.size[1]
    except (ImageError, OSError, ValueError, SyntaxError, struct.error, EOFError):
        return None
