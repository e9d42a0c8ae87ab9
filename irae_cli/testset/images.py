"""One image of a test set: its clean copy, one degraded file (plus mask) per level, and their manifest lines."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..degradations import Level, derive_seed, quantize_u8
from ..errors import ImageError
from ..files import Source, atomic_write_bytes
from ..imageio import read_image
from ..pixels import mask_to_pil, to_pil, to_u8
from .manifest import MANIFEST_VERSION, sha256

PNG_COMPRESS_LEVEL = 6
CLEAN_DIR = "clean"
MASK_DIR = "masks"


# --------------------------------------------------------------------------- encoding

def png_bytes(x: torch.Tensor) -> bytes:
    """8-bit PNG of (C, H, W) in [0, 1] (clipped and rounded), no metadata: same pixels -> same bytes."""
    buf = io.BytesIO()
    to_pil(x).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def npy_bytes(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32)), allow_pickle=False)
    return buf.getvalue()


def _mask_png(mask: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    mask_to_pil(mask).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _is_same_png(data: bytes, x: torch.Tensor) -> bool:
    """True when ``data`` is a PNG that, read as it is, has exactly the pixels of ``x``.

    Then the original bytes serve as the clean copy (its sha256 is the source
    file's).  An EXIF-rotated, palette, alpha, 16-bit or transparent-colour PNG
    fails the test and is re-encoded instead.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read_image said what Pillow finds odd in this file, naming it
            img = Image.open(io.BytesIO(data))
        if img.format != "PNG" or img.mode not in ("RGB", "L") or "transparency" in img.info:
            return False
        arr = np.asarray(img)
    except Exception:  # noqa: BLE001 - read_image already decoded it; any doubt means re-encode
        return False
    ref = to_u8(x)
    return arr.shape == ref.shape and bool(np.array_equal(arr, ref))


def _degrade(level: Level, x: torch.Tensor, g: torch.Generator) -> tuple[str, bytes, bytes | None, dict]:
    """-> (suffix, degraded bytes, mask PNG bytes or None, parameters for the manifest)."""
    y, mask, params = level.draw(x, g)
    p = level.params
    if level.task == "denoise":
        if p["protocol"] == "float":
            return ".npy", npy_bytes(y), None, params
        return ".png", png_bytes(quantize_u8(y)), None, params
    if level.task == "jpeg":
        return ".jpg", level.jpeg_file(x), None, params
    return ".png", png_bytes(y), _mask_png(mask), params

# --------------------------------------------------------------------------- one image

class Writer:
    """Writes files into OUT under the run's policy; ImageOutcome.put counts what it did."""

    def __init__(self, out: Path, policy: str):
        self.out, self.policy = out, policy  # policy: "new" | "overwrite" | "skip"

    def put(self, rel: str, data: bytes) -> bool:
        """Write OUT/rel; -> True if written, False if an identical file was kept."""
        path = self.out / rel
        if self.policy == "skip" and path.exists():
            try:
                same = path.read_bytes() == data
            except OSError as e:
                raise ImageError(f"{path}: exists but cannot be read ({e.strerror}); remove it or use --overwrite"
                                 ) from None
            if not same:
                raise ImageError(f"{path}: exists with different content (other settings, seed or library "
                                 f"version); remove it, use --overwrite, or choose a new output folder")
            return False
        try:
            atomic_write_bytes(path, data, overwrite=self.policy == "overwrite")
        except OSError as e:
            raise ImageError(f"{path}: cannot write ({e.strerror or e}); check free space and permissions") from None
        return True


@dataclass(frozen=True)
class RunSetup:
    """What every image of one run shares (the writer is thread-safe: each write is atomic)."""
    levels: list[Level]
    seed: int
    writer: Writer
    versions: dict  # codec_versions(), recorded on every manifest line


@dataclass
class ImageOutcome:
    """What one image gave: its manifest lines, failure lines and file counts."""
    records: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: int = 0
    kept: int = 0

    def put(self, writer: Writer, rel: str, data: bytes) -> None:
        if writer.put(rel, data):
            self.written += 1
        else:
            self.kept += 1


@dataclass(frozen=True)
class _Clean:
    """One input as written to clean/: the pixels every level degrades and the names its outputs get."""
    source: str  # the input's path relative to CLEAN, '/'-separated (also the seed's key)
    stem: str  # ``source`` without extension: the file name under clean/, each level and masks/
    x: torch.Tensor  # rounded to 8 bits, as the clean file holds it
    sha256: str  # of the clean file's bytes

    @property
    def rel(self) -> str:
        return f"{CLEAN_DIR}/{self.stem}.png"


def _write_clean(src: Source, run: RunSetup, outcome: ImageOutcome) -> _Clean | None:
    """Read ``src`` and write its clean copy; None (with the failure noted in ``outcome``) if either fails."""
    try:
        data = src.path.read_bytes()
    except OSError as e:
        outcome.failures.append(f"{src.path}: cannot read ({e.strerror or e}); check it exists and is readable")
        return None
    try:
        x, _meta = read_image(src.path)
    except ImageError as e:
        outcome.failures.append(str(e))
        return None
    # Degrade exactly what the clean file holds: 16-bit inputs are rounded to 8 bits first.
    x = quantize_u8(x)
    clean_bytes = data if _is_same_png(data, x) else png_bytes(x)
    clean = _Clean(src.rel.as_posix(), src.rel.with_suffix("").as_posix(), x, sha256(clean_bytes))
    try:
        outcome.put(run.writer, clean.rel, clean_bytes)
    except ImageError as e:
        outcome.failures.append(str(e))
        return None
    return clean


def _write_level(src: Source, clean: _Clean, level: Level, run: RunSetup, outcome: ImageOutcome) -> None:
    """Degrade one image at one level, write its file(s) and add its manifest line (or a failure line)."""
    image_seed = derive_seed(run.seed, clean.source, level.name)
    g = torch.Generator().manual_seed(image_seed)
    if level.task == "none":  # a mixed set's clean member is the clean file itself: nothing more to write
        deg_rel, digest, mask, mask_rel, params = clean.rel, clean.sha256, None, None, {}
    else:
        try:
            suffix, degraded, mask, params = _degrade(level, clean.x, g)
            deg_rel = f"{level.name}/{clean.stem}{suffix}"
            mask_rel = f"{MASK_DIR}/{level.name}/{clean.stem}.png" if mask is not None else None
            outcome.put(run.writer, deg_rel, degraded)
            if mask is not None:
                outcome.put(run.writer, mask_rel, mask)
        except ImageError as e:
            outcome.failures.append(f"{src.path} [{level.name}]: {e}" if str(src.path) not in str(e) else str(e))
            return
        digest = sha256(degraded)
    outcome.records.append({
        "manifest_version": MANIFEST_VERSION,
        "id": f"{level.name}/{clean.stem}",
        "task": level.task,
        "level": level.name,
        "source": clean.source,
        "clean": clean.rel,
        "degraded": deg_rel,
        "mask": mask_rel,
        "params": params,
        "seed": image_seed,
        "base_seed": run.seed,
        "width": int(clean.x.shape[-1]),
        "height": int(clean.x.shape[-2]),
        "channels": int(clean.x.shape[0]),
        "clean_sha256": clean.sha256,
        "degraded_sha256": digest,
        "mask_sha256": sha256(mask) if mask is not None else None,
        "versions": run.versions,
    })


def process_image(src: Source, run: RunSetup) -> ImageOutcome:
    """All levels of one image; a level that fails does not stop the others."""
    outcome = ImageOutcome()
    clean = _write_clean(src, run, outcome)
    if clean is not None:
        for level in run.levels:
            _write_level(src, clean, level, run, outcome)
    return outcome
