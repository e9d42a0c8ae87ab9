#!/usr/bin/env python3
"""Fetch real photographs from Debian wallpaper packages into a train/val set.

    python scripts/fetch_photos.py --out data/photos

What it does (see /work/shared/notes/data.md for the background):

1. ``apt-get download`` the packages in PACKAGES into a cache folder
   (default ``data/cache/debs``); a package whose ``.deb`` is already there is
   not downloaded again.  ``apt-get update`` runs only when apt does not know a
   package yet, or when ``--update`` is given.  Nothing is installed.
2. ``dpkg -x`` each package into a temporary folder and collect candidates:
   * enlightenment-data: each ``backgrounds/*.edj`` (an Eet archive) is scanned
     for embedded JPEG streams (``FF D8 FF`` ... ``FF D9``, walked marker by
     marker); the largest stream that Pillow decodes is the photo.
   * lomiri-wallpapers-*: each ``usr/share/backgrounds/*.jpg``.
   * plasma-workspace-wallpapers: for each wallpaper, the largest image (by
     pixel count) in ``contents/images/``.
3. Keep only the sources listed under "photos" in ``scripts/photo_list.json``
   (package + source name -> short id, licence); the "excluded" list names the
   drawings / renders that are dropped and why.  A candidate in neither list is
   reported (use ``--review DIR`` to write thumbnails and decide).
4. Each kept photo: EXIF orientation applied, converted to RGB, halved with
   Pillow ``Image.reduce(2)`` (2x2 box average, which also averages away the
   JPEG blocking of the q70-90 wallpapers); a photo that would still be larger
   than MAX_MP_AFTER_HALVING (8) megapixels is reduced by 4 instead (halved
   twice; none of the photos kept now is that large).  An odd last row/column
   is dropped first so every pixel is a full box average.  Saved as PNG.
5. Split: the ids under "val_ids" (4 photos of the plasma set) go to ``val/``
   as non-overlapping 640x400 crops (grid centred in the photo, the margin
   left over is dropped); every other photo goes whole to ``train/``.

Re-running is cheap: a ``manifest.json`` in the output folder records what was
made from which list; when it matches and every file is present nothing is
redone (``--force`` rebuilds).  Stale PNGs in ``train/``/``val/`` are removed.

Only the standard library and Pillow are used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from PIL import Image, ImageOps
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("fetch_photos: error: Pillow is required (pip install pillow)")

PACKAGES = (
    "enlightenment-data",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "plasma-workspace-wallpapers",
)
MAX_MP_AFTER_HALVING = 8.0  # megapixels; above this a photo is halved again
VAL_CROP = (640, 400)  # width, height: a halved 1280x800 validation photo gives 4 crops, all of it used
SCRIPT_VERSION = 1  # bump when the processing changes (invalidates manifests)

HERE = Path(__file__).resolve().parent
DEFAULT_LIST = HERE / "photo_list.json"


class FetchError(Exception):
    """A problem reported to the user as one line (exit status 2)."""


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# apt / dpkg
# --------------------------------------------------------------------------

def _need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FetchError(
            f"'{name}' not found: this script needs a Debian/Ubuntu system with apt and dpkg"
        )
    return path


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # prefer an apt error line ("E: ...") over trailing warnings
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["no output"])[-1]


def _apt_knows(pkg: str) -> bool:
    res = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", pkg],
        capture_output=True, text=True,
    )
    return res.returncode == 0 and "Package:" in res.stdout


def _apt_update() -> None:
    log("running apt-get update ...")
    res = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    if res.returncode != 0:
        raise FetchError(f"apt-get update failed (exit {res.returncode}): {_last_line(res.stderr or res.stdout)}")


def cached_deb(cache: Path, pkg: str) -> Path | None:
    """The cached .deb of *pkg* (the most recently downloaded if several versions)."""
    found = [f for f in cache.glob(f"{pkg}_*.deb") if f.is_file()]
    return max(found, key=lambda f: (f.stat().st_mtime, f.name)) if found else None


def fetch_debs(cache: Path, packages, *, update: bool) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    debs: dict[str, Path] = {}
    missing = []
    for pkg in packages:
        deb = cached_deb(cache, pkg)
        if deb is not None and not update:
            debs[pkg] = deb
        else:
            missing.append(pkg)
    if not missing:
        return debs
    _need_tool("apt-get")
    if update or not all(_apt_knows(p) for p in missing):
        _apt_update()
    for pkg in missing:
        log(f"apt-get download {pkg} ...")
        cmd = ["apt-get", "download", pkg]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # as root apt drops to user _apt, which cannot write into our cache
            cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
        res = subprocess.run(cmd, cwd=cache, capture_output=True, text=True)
        deb = cached_deb(cache, pkg)
        if res.returncode != 0 or deb is None:
            raise FetchError(
                f"could not download package {pkg} (apt-get download exit {res.returncode}): "
                f"{_last_line(res.stderr or res.stdout)}"
            )
        debs[pkg] = deb
    return debs


def extract_deb(deb: Path, dest: Path) -> None:
    _need_tool("dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        raise FetchError(f"dpkg -x {deb.name} failed: {_last_line(res.stderr or res.stdout)}")


# --------------------------------------------------------------------------
# JPEG streams inside Eet (.edj) archives
# --------------------------------------------------------------------------

_STANDALONE = {0x01} | set(range(0xD0, 0xD8))  # TEM, RST0-7: no length field


def jpeg_stream_end(buf: bytes, start: int) -> int | None:
    """End (exclusive) of the JPEG stream starting at *start*, or None.

    Walks the marker segments (so an ``FF D9`` inside an EXIF thumbnail or in
    a segment payload does not end the stream early) and, after each SOS,
    the entropy-coded data up to the next real marker.
    """
    n = len(buf)
    if buf[start:start + 2] != b"\xff\xd8":
        return None
    i = start + 2
    while i < n:
        if buf[i] != 0xFF:
            return None
        while i < n and buf[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = buf[i]
        i += 1
        if marker == 0xD9:
            return i
        if marker in _STANDALONE:
            continue
        if marker == 0xD8 or i + 2 > n:
            return None
        length = (buf[i] << 8) | buf[i + 1]
        if length < 2:
            return None
        i += length
        if marker == 0xDA:  # scan data follows until the next non-RST marker
            while True:
                j = buf.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return None
                nxt = buf[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    i = j + 2
                elif nxt == 0xFF:
                    i = j + 1
                else:
                    i = j
                    break
    return None


def largest_jpeg_in(path: Path) -> tuple[bytes, tuple[int, int]] | None:
    """The largest embedded JPEG stream in *path* that Pillow decodes."""
    buf = path.read_bytes()
    spans = []
    pos = buf.find(b"\xff\xd8\xff")
    while pos >= 0:
        end = jpeg_stream_end(buf, pos)
        if end is not None:
            spans.append((end - pos, pos, end))
        pos = buf.find(b"\xff\xd8\xff", pos + 1)
    for _, a, b in sorted(spans, reverse=True):
        data = buf[a:b]
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "JPEG":
                    continue
                im.load()
                return data, im.size
        except Exception:  # noqa: BLE001 - any decode failure: try the next one
            continue
    return None


# --------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------

def _pixels(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001
        return -1


def find_candidates(pkg: str, root: Path) -> dict[str, object]:
    """Map source name -> Path (an image file) or bytes (an extracted JPEG)."""
    out: dict[str, object] = {}
    if pkg == "enlightenment-data":
        for edj in sorted((root / "usr/share/enlightenment/data/backgrounds").glob("*.edj")):
            found = largest_jpeg_in(edj)
            if found is not None:
                out[edj.name] = found[0]
    elif pkg.startswith("lomiri-wallpapers"):
        for f in sorted((root / "usr/share/backgrounds").iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.is_file():
                out[f.name] = f
    elif pkg == "plasma-workspace-wallpapers":
        for wp in sorted((root / "usr/share/wallpapers").iterdir()):
            imgs = [f for f in (wp / "contents/images").glob("*")
                    if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
            if imgs:
                out[wp.name] = max(imgs, key=lambda f: (_pixels(f), f.name))
    else:
        raise FetchError(f"no candidate rule for package {pkg}")
    return out


def open_source(src) -> Image.Image:
    im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    im.load()
    return im


def to_clean_rgb(im: Image.Image) -> tuple[Image.Image, int]:
    """EXIF-orient, convert to RGB, halve (twice if still > 8 MP)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        bg = Image.new("RGB", im.size, (0, 0, 0))
        rgba = im.convert("RGBA")
        bg.paste(rgba, mask=rgba.getchannel("A"))
        im = bg
    elif im.mode != "RGB":
        im = im.convert("RGB")
    factor = 2
    if (im.size[0] // 2) * (im.size[1] // 2) > MAX_MP_AFTER_HALVING * 1e6:
        factor = 4
    # drop the odd last row/column so that every output pixel is a full box average
    w, h = im.size
    if w % factor or h % factor:
        im = im.crop((0, 0, w - w % factor, h - h % factor))
    return im.reduce(factor), factor


def val_crops(im: Image.Image):
    """Non-overlapping VAL_CROP tiles on a grid centred in *im*."""
    cw, ch = VAL_CROP
    w, h = im.size
    nx, ny = w // cw, h // ch
    x0, y0 = (w - nx * cw) // 2, (h - ny * ch) // 2
    for r in range(ny):
        for c in range(nx):
            box = (x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch)
            yield r, c, im.crop(box)


# --------------------------------------------------------------------------
# photo list
# --------------------------------------------------------------------------

def load_list(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FetchError(f"photo list {path} not found") from None
    except json.JSONDecodeError as e:
        raise FetchError(f"photo list {path} is not valid JSON: {e}") from None
    ids = [p["id"] for p in data["photos"]]
    if len(set(ids)) != len(ids):
        raise FetchError(f"photo list {path}: duplicate ids")
    unknown = set(data.get("val_ids", [])) - set(ids)
    if unknown:
        raise FetchError(f"photo list {path}: val_ids not among photos: {sorted(unknown)}")
    return data


def _list_digest(data: dict) -> str:
    blob = json.dumps({"photos": data["photos"], "val_ids": data["val_ids"],
                       "v": SCRIPT_VERSION, "max_mp": MAX_MP_AFTER_HALVING,
                       "crop": VAL_CROP}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def _summary(out: Path, manifest: dict) -> None:
    for split in ("train", "val"):
        files = manifest["files"][split]
        mp = sum(f["w"] * f["h"] for f in files) / 1e6
        if split == "val":
            nsrc = len({f["id"] for f in files})
            log(f"{split}: {len(files)} crops {VAL_CROP[0]}x{VAL_CROP[1]} from {nsrc} photos, "
                f"{mp:.1f} MP  ({out / split})")
        else:
            log(f"{split}: {len(files)} photos, {mp:.1f} MP  ({out / split})")


def _up_to_date(out: Path, digest: str) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("list_digest") != digest:
        return None
    for split in ("train", "val"):
        for f in manifest["files"].get(split, []):
            if not (out / split / f["file"]).is_file():
                return None
    return manifest


def write_review(review: Path, candidates: dict, listed: dict) -> None:
    """Thumbnails (512 px wide) of every candidate, named by status."""
    review.mkdir(parents=True, exist_ok=True)
    for (pkg, name), src in candidates.items():
        status = listed.get((pkg, name), "unlisted")
        im = ImageOps.exif_transpose(open_source(src)).convert("RGB")
        size = im.size
        im.thumbnail((512, 512))
        stem = f"{status}__{pkg}__{Path(name).stem}"
        im.save(review / f"{stem}.jpg", quality=90)
        log(f"review: {stem}.jpg  ({size[0]}x{size[1]})")


def run(args) -> int:
    out, cache = Path(args.out), Path(args.cache)
    data = load_list(Path(args.list))
    digest = _list_digest(data)
    if not (args.force or args.update) and args.review is None:
        manifest = _up_to_date(out, digest)
        if manifest is not None:
            log(f"{out}: up to date (use --force to rebuild)")
            _summary(out, manifest)
            return 0

    packages = list(PACKAGES)
    debs = fetch_debs(cache, packages, update=args.update)

    listed = {(p["package"], p["source"]): "kept" for p in data["photos"]}
    listed.update({(x["package"], x["source"]): "excluded" for x in data.get("excluded", [])})

    with tempfile.TemporaryDirectory(prefix="fetch_photos_") as tmp:
        candidates: dict[tuple[str, str], object] = {}
        for pkg in packages:
            root = Path(tmp) / pkg
            log(f"dpkg -x {debs[pkg].name}")
            extract_deb(debs[pkg], root)
            for name, src in find_candidates(pkg, root).items():
                candidates[(pkg, name)] = src
        log(f"{len(candidates)} candidate images in {len(packages)} packages")

        if args.review is not None:
            write_review(Path(args.review), candidates, listed)
            return 0

        unlisted = sorted(k for k in candidates if k not in listed)
        if unlisted:
            names = ", ".join(f"{p}/{n}" for p, n in unlisted)
            log(f"warning: {len(unlisted)} candidates not in the photo list (ignored): {names}")
        missing = [p for p in data["photos"] if (p["package"], p["source"]) not in candidates]
        if missing:
            p = missing[0]
            raise FetchError(
                f"{len(missing)} listed photos not found in the packages, e.g. {p['package']}/{p['source']}"
                " (package version changed? run with --review DIR)"
            )

        val_ids = set(data["val_ids"])
        made = {"train": [], "val": []}
        for split in made:
            (out / split).mkdir(parents=True, exist_ok=True)
        n_excl = sum(1 for k in candidates if listed.get(k) == "excluded")
        for p in data["photos"]:
            src = candidates[(p["package"], p["source"])]
            im, factor = to_clean_rgb(open_source(src))
            if p["id"] in val_ids:
                for r, c, crop in val_crops(im):
                    fname = f"{p['id']}_r{r}c{c}.png"
                    crop.save(out / "val" / fname)
                    made["val"].append({"file": fname, "id": p["id"], "w": crop.size[0], "h": crop.size[1]})
            else:
                fname = f"{p['id']}.png"
                im.save(out / "train" / fname)
                made["train"].append({"file": fname, "id": p["id"], "w": im.size[0], "h": im.size[1],
                                      "downscale": factor})
            log(f"  {p['id']:<22} {p['package']}/{p['source']} -> 1/{factor}: {im.size[0]}x{im.size[1]}")

    # drop stale PNGs from an earlier list
    for split, files in made.items():
        keep = {f["file"] for f in files}
        for f in (out / split).glob("*.png"):
            if f.name not in keep:
                f.unlink()

    manifest = {
        "list_digest": digest,
        "script_version": SCRIPT_VERSION,
        "debs": {k: v.name for k, v in sorted(debs.items())},
        "kept": len(data["photos"]),
        "excluded": n_excl,
        "files": made,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"kept {len(data['photos'])} photos, dropped {n_excl} listed non-photos"
        + (f", ignored {len(unlisted)} unlisted" if unlisted else ""))
    _summary(out, manifest)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/photos", help="output folder (default: data/photos)")
    ap.add_argument("--cache", default="data/cache/debs", help="where .deb files are kept (default: data/cache/debs)")
    ap.add_argument("--list", default=str(DEFAULT_LIST), help="photo list JSON (default: scripts/photo_list.json)")
    ap.add_argument("--update", action="store_true", help="run apt-get update and download the packages again")
    ap.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    ap.add_argument("--review", metavar="DIR", help="only write thumbnails of every candidate to DIR")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except FetchError as e:
        print(f"fetch_photos: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fetch_photos: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
