"""Training packs: random crops of photos in one compact safetensors file.

A pack lets a set of training crops travel to a machine that cannot read the
original photos (e.g. a GPU box with a 64 MiB upload limit).  File layout:

* tensor ``crops``  -- uint8, shape (N, 3, crop, crop), RGB, row-major crops
* tensor ``origin`` -- int32, shape (N, 3): (source index, top, left) of each
  crop in its source image, for provenance
* one metadata key ``irae_pack`` holding a JSON object (a single key keeps the
  file bytes deterministic: safetensors writes multiple metadata keys in a
  random order)::

      {"format": "irae-pack", "format_version": 1, "crop": 128, "count": N,
       "seed": 0, "sources": ["a.png", ...], "crops_per_mp": 12.5,
       "min_std": 0.00784, "created_by": "irae 0.1.0"}

How crops are chosen (deterministic for the same files, options and seed):

1. Sources are sorted by file name; each is decoded with Pillow, EXIF-rotated
   and converted to RGB (grayscale and palette images become 3 equal/derived
   channels; alpha is dropped).  Images smaller than the crop are skipped.
2. Each source gets a quota ``max(1, round(crops_per_mp * megapixels))``.  With
   ``crops_per_mp=None`` the quota is set so the crops fill ``max_bytes``, but
   never more than ``MAX_AUTO_COVERAGE`` (2) crops per pixel on average.
3. All quotas are interleaved by fractional rank (crop ``k`` of a source with
   quota ``n`` sorts at ``(k + 0.5) / n``), so cutting the list at any length
   keeps every source's share proportional to its area.  The list is cut where
   the next crop would make the file larger than ``max_bytes``.
4. For each source, top-left corners are drawn uniformly from
   ``numpy.random.default_rng([seed, crc32(file name), n])``; a crop whose
   largest per-channel standard deviation across its pixels is below
   ``min_std`` (2/255) is rejected and another drawn (flat crops teach a
   denoiser nothing).  After ``10 * quota + 10`` draws a source gives up and
   contributes fewer crops.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import __version__
from .errors import ImageError, IraeError
from .files import atomic_write_bytes
from .imageio import exif_orientation, upright

FORMAT = "irae-pack"
FORMAT_VERSION = 1
META_KEY = "irae_pack"
MIN_STD = 2 / 255
MAX_AUTO_COVERAGE = 2.0  # crops_per_mp=None: at most this many crops per source pixel on average
_MAX_HEADER = 100 * 2 ** 20


class PackError(IraeError, ValueError):
    """A training pack cannot be built or read; the message is one line naming the file."""


# --------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------

def _unreadable(path: Path, e: Exception) -> PackError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return PackError(f"{path}: cannot read image ({reason})")


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = upright(im, path)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: scale to 8 bit first
                arr = np.asarray(im, dtype=np.float64)
                scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
                im = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from e


def _upright_size(path: Path) -> tuple[int, int]:
    """(width, height) once EXIF-rotated, from the header alone."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if exif_orientation(im, path) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees
                w, h = h, w
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from e
    return w, h


def _header_overhead(metadata: dict[str, str], n: int, crop: int) -> int:
    """Exact size of the safetensors file minus the tensor bytes, for n crops."""
    end = 3 * crop * crop * n
    header = {
        "__metadata__": metadata,
        "origin": {"dtype": "I32", "shape": [n, 3], "data_offsets": [0, 12 * n]},
        "crops": {"dtype": "U8", "shape": [n, 3, crop, crop], "data_offsets": [12 * n, 12 * n + end]},
    }
    size = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + size + (-size) % 8  # safetensors pads the header to a multiple of 8


def _fit_count(meta_for, crop: int, max_bytes: int, upper: int) -> int:
    """Largest n <= upper whose file (estimated with a small margin) fits in max_bytes."""
    per = 3 * crop * crop + 12
    n = min(upper, max(0, max_bytes // per))
    while n > 0 and _header_overhead(meta_for(n), n, crop) + n * per > max_bytes:
        n -= max(1, (_header_overhead(meta_for(n), n, crop) + n * per - max_bytes) // per)
    return max(n, 0)


def _is_flat(c: np.ndarray, min_std: float) -> bool:
    x = c.reshape(-1, 3).astype(np.float32)
    return float(x.std(axis=0).max()) < min_std * 255.0


@dataclass(frozen=True)
class _Recipe:
    """The options a pack is cut with, and its sources: what its metadata records."""
    out_path: Path
    crop: int
    seed: int
    min_std: float
    max_bytes: int
    sources: list[str]

    def metadata(self, n: int, cpm: float | None = None) -> dict[str, str]:
        info = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "crop": self.crop, "count": n, "seed": self.seed,
            "sources": self.sources, "crops_per_mp": None if cpm is None else round(float(cpm), 6),
            "min_std": round(float(self.min_std), 6), "created_by": f"irae {__version__}",
        }
        return {META_KEY: json.dumps(info, sort_keys=True, separators=(",", ":"))}

    def too_small(self) -> PackError:
        return PackError(f"{self.out_path}: max_bytes={self.max_bytes} is too small for even one "
                         f"{self.crop}x{self.crop} crop")


def _check_options(out_path, crop: int, crops_per_mp: float | None) -> None:
    if crop < 8:
        raise PackError(f"{out_path}: crop size {crop} is too small (use >= 8)")
    if crops_per_mp is not None and not crops_per_mp > 0:
        raise PackError(f"{out_path}: crops_per_mp must be positive, got {crops_per_mp}")


def _measure_sources(paths: list[Path], crop: int, out_path: Path):
    """([(path, (w, h)) of every source at least crop x crop], [names of those smaller]), from headers only."""
    if not paths:
        raise PackError(f"{out_path}: no input images")
    sizes = [_upright_size(p) for p in paths]
    fits = [w >= crop and h >= crop for w, h in sizes]
    used = [(p, wh) for p, wh, ok in zip(paths, sizes, fits) if ok]
    skipped_small = [p.name for p, ok in zip(paths, fits) if not ok]
    if not used:
        raise PackError(f"{out_path}: no input image is at least {crop}x{crop}")
    return used, skipped_small


def _plan_crops(used, recipe: _Recipe, crops_per_mp: float | None) -> tuple[float, list[int], bool]:
    """(crops per MP, the source index of every crop slot in interleaved order, whether max_bytes cut the list).

    Crop k of a source with quota q sorts at (k + 0.5) / q, so any prefix of the
    list keeps every source's share proportional to its area.
    """
    crop = recipe.crop
    mps = [w * h / 1e6 for _, (w, h) in used]
    if crops_per_mp is None:
        budget = _fit_count(lambda n: recipe.metadata(n, 1e6), crop, recipe.max_bytes, upper=10 ** 9)
        cpm = min(budget / sum(mps), MAX_AUTO_COVERAGE * 1e6 / (crop * crop))
    else:
        cpm = float(crops_per_mp)
    quotas = [max(1, round(cpm * mp)) for mp in mps]
    order = sorted(((k + 0.5) / q, i, k) for i, q in enumerate(quotas) for k in range(q))
    n_fit = _fit_count(lambda n: recipe.metadata(n, cpm), crop, recipe.max_bytes, upper=len(order))
    if n_fit == 0:
        raise recipe.too_small()
    return cpm, [i for _, i, _ in order[:n_fit]], n_fit < len(order)


def _cut_source(img: np.ndarray, want: int, rng: np.random.Generator, crop: int, min_std: float):
    """([(crop, top, left)] of up to ``want`` non-flat crops, number of flat draws rejected)."""
    h, w = img.shape[:2]
    got: list[tuple[np.ndarray, int, int]] = []
    rejected = tries = 0
    while len(got) < want and tries < 10 * want + 10:  # a mostly flat image gives up, short
        tries += 1
        y = int(rng.integers(0, h - crop + 1))
        x = int(rng.integers(0, w - crop + 1))
        c = img[y:y + crop, x:x + crop]
        if _is_flat(c, min_std):
            rejected += 1
            continue
        got.append((c, y, x))
    return got, rejected


def _cut_crops(used, slots: list[int], recipe: _Recipe):
    """(crops of each source, flat draws rejected, crops the sources could not supply)."""
    take = [0] * len(used)
    for i in slots:
        take[i] += 1
    per_source, rejected, short = [], 0, 0
    dup: dict[str, int] = {}  # same file name in two folders: each gets its own random stream
    for (p, _), want in zip(used, take):
        got: list[tuple[np.ndarray, int, int]] = []
        if want:
            nth = dup.get(p.name, 0)
            dup[p.name] = nth + 1
            rng = np.random.default_rng([recipe.seed, zlib.crc32(p.name.encode("utf-8", "surrogateescape")), nth])
            got, flat = _cut_source(_read_rgb(p), want, rng, recipe.crop, recipe.min_std)
            rejected += flat
            short += want - len(got)
        per_source.append(got)
    return per_source, rejected, short


def _interleave(slots: list[int], per_source) -> tuple[list[np.ndarray], list[tuple[int, int, int]]]:
    """The crops in slot order, skipping slots a source could not fill; with (source, top, left) of each."""
    next_k = [0] * len(per_source)
    crops, origin = [], []
    for i in slots:
        k = next_k[i]
        next_k[i] += 1
        if k < len(per_source[i]):
            c, y, x = per_source[i][k]
            crops.append(c)
            origin.append((i, y, x))
    return crops, origin


def _encode(crops, origin, recipe: _Recipe, cpm: float) -> tuple[bytes, int]:
    """(safetensors bytes, crops kept): the most leading crops whose file fits in max_bytes."""
    all_crops = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    all_origin = torch.tensor(origin, dtype=torch.int32).reshape(-1, 3)
    n = len(crops)
    while True:  # the estimate in _plan_crops leaves a margin; this loop only guards against surprises
        data = save({"crops": all_crops[:n].contiguous(), "origin": all_origin[:n].contiguous()},
                    metadata=recipe.metadata(n, cpm))
        if len(data) <= recipe.max_bytes:
            return data, n
        n -= 1
        if n == 0:
            raise recipe.too_small()


def build_pack(image_paths, out_path, *, crop: int = 192, crops_per_mp: float | None = None,
               max_bytes: int = 50 * 2 ** 20, seed: int = 0, min_std: float = MIN_STD) -> dict:
    """Cut seeded random crops from ``image_paths`` into one pack at ``out_path``.

    Returns a summary: ``path``, ``count``, ``bytes``, ``crop``, ``seed``,
    ``crops_per_mp``, ``sources``, ``per_source`` (crops per file name),
    ``skipped_small`` (files smaller than the crop), ``rejected_flat`` (draws
    rejected as flat), ``short`` (crops a source could not supply) and
    ``limited_by_max_bytes``.
    """
    crop = int(crop)
    _check_options(out_path, crop, crops_per_mp)
    out_path = Path(out_path)
    paths = sorted((Path(p) for p in image_paths), key=lambda p: (p.name, str(p)))  # by name: reproducible
    used, skipped_small = _measure_sources(paths, crop, out_path)
    sources = [p.name for p, _ in used]
    recipe = _Recipe(out_path, crop, int(seed), min_std, max_bytes, sources)
    cpm, slots, limited = _plan_crops(used, recipe, crops_per_mp)
    per_source, rejected, short = _cut_crops(used, slots, recipe)
    crops, origin = _interleave(slots, per_source)
    if not crops:
        raise PackError(f"{out_path}: every crop was flat (std < {min_std:.4f}); nothing to pack")
    data, n = _encode(crops, origin, recipe, cpm)
    try:
        atomic_write_bytes(out_path, data, overwrite=True)
    except ImageError as e:
        raise PackError(str(e)) from None
    counts = [0] * len(used)
    for i, _, _ in origin[:n]:
        counts[i] += 1
    return {
        "path": str(out_path), "count": n, "bytes": len(data), "crop": crop, "seed": int(seed),
        "crops_per_mp": cpm, "sources": sources, "per_source": dict(zip(sources, counts)),
        "skipped_small": skipped_small, "rejected_flat": rejected, "short": short,
        "limited_by_max_bytes": limited or n < len(crops),
    }


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------

def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PackError(f"{path}: not a training pack (file of {size} bytes is too short)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > _MAX_HEADER or hlen < 2:
            raise PackError(f"{path}: not a training pack (not a safetensors file)")
        raw = f.read(hlen)
    if len(raw) < hlen:
        if raw[:1] == b"{":
            raise PackError(f"{path}: truncated training pack (header cut short at {size} bytes)")
        raise PackError(f"{path}: not a training pack (not a safetensors file)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PackError(f"{path}: not a training pack (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise PackError(f"{path}: not a training pack (not a safetensors file)")
    return header, 8 + hlen


def _pack_metadata(path: Path, header: dict) -> dict:
    """The parsed ``irae_pack`` metadata of a safetensors header, refused when it is not a pack this irae reads."""
    meta_raw = (header.get("__metadata__") or {}).get(META_KEY)
    if meta_raw is None:
        raise PackError(f"{path}: not a training pack (safetensors file without '{META_KEY}' metadata)")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError:
        raise PackError(f"{path}: not a training pack (unreadable '{META_KEY}' metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise PackError(f"{path}: not a training pack (format={fmt!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise PackError(f"{path}: training pack format version {meta.get('format_version')} is newer than "
                        f"this irae ({FORMAT_VERSION}); update irae")
    return meta


def load_pack(path) -> tuple[torch.Tensor, dict]:
    """Read a pack: ``(crops, metadata)``.

    ``crops`` is the uint8 tensor (N, 3, crop, crop); ``metadata`` is the
    parsed JSON (``format``, ``format_version``, ``crop``, ``count``, ``seed``,
    ``sources``, ``crops_per_mp``, ``min_std``, ``created_by``) plus
    ``origin``: an int32 (N, 3) tensor of (source index, top, left).
    Raises :class:`PackError` (a ``ValueError``) with a one-line message
    naming the file when it is missing, not a pack, or truncated.
    """
    path = Path(path)
    if not path.exists():
        raise PackError(f"{path}: no such training pack")
    if path.is_dir():
        raise PackError(f"{path}: is a folder, not a training pack file")
    header, data_start = _read_header(path)
    meta = _pack_metadata(path, header)
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    need = data_start + (max(ends) if ends else 0)
    have = path.stat().st_size
    if have < need:
        raise PackError(f"{path}: truncated training pack ({have} of {need} bytes)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PackError(f"{path}: not a readable training pack ({reason})") from e
    crops = tensors.get("crops")
    c = meta.get("crop")
    if (crops is None or crops.dtype != torch.uint8 or crops.dim() != 4 or tuple(crops.shape[1:]) != (3, c, c)
            or crops.shape[0] != meta.get("count")):
        shape = None if crops is None else (str(crops.dtype).replace("torch.", ""), tuple(crops.shape))
        raise PackError(f"{path}: training pack 'crops' tensor {shape} does not match its metadata "
                        f"(crop={c}, count={meta.get('count')})")
    origin = tensors.get("origin")
    if origin is not None:
        meta["origin"] = origin
    return crops, meta


# --------------------------------------------------------------------------
# command line: python -m irae_cli.pack IMAGES_OR_FOLDERS... -o PACK
# --------------------------------------------------------------------------

def _expand(inputs) -> list[Path]:
    """Files as given; folders searched recursively for the image types irae reads (build_pack sorts)."""
    from .files import discover

    out: list[Path] = []
    for s in inputs:
        p = Path(s)
        out += [src.path for src in discover(p, recursive=True)] if p.is_dir() else [p]
    return out


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m irae_cli.pack",
                                 description="Build a training pack (random crops in one safetensors file).")
    ap.add_argument("inputs", nargs="+", help="image files or folders")
    ap.add_argument("-o", "--out", required=True, help="pack file to write (.safetensors)")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--crops-per-mp", type=float, default=None, help="default: fill --max-mib")
    ap.add_argument("--max-mib", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing pack file")
    args = ap.parse_args(argv)
    if Path(args.out).exists() and not args.overwrite:
        print(f"error: {args.out} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        info = build_pack(_expand(args.inputs), args.out, crop=args.crop, crops_per_mp=args.crops_per_mp,
                          max_bytes=int(args.max_mib * 2 ** 20), seed=args.seed)
    except PackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{info['path']}: {info['count']} crops {info['crop']}x{info['crop']} from {len(info['sources'])} images, "
          f"{info['bytes'] / 2 ** 20:.2f} MiB ({info['crops_per_mp']:.2f} crops/MP, "
          f"{info['rejected_flat']} flat draws rejected"
          + (f", skipped {len(info['skipped_small'])} small images" if info['skipped_small'] else "") + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
