#!/usr/bin/env python3
"""Fetch real photographs from Debian wallpaper packages into a train/val set.

    python scripts/fetch_photos.py --out data/photos

What it does (docs/photos.md has the sources, licences and choices):

1. ``apt-get download`` the packages that hold the selected photos into a
   cache folder (default ``data/cache/debs``); a package whose ``.deb`` is
   already there is not downloaded again.  ``apt-get update`` runs only when
   apt does not know a package yet, or when ``--update`` is given.  Nothing
   is installed.
2. ``dpkg -x`` each package into a temporary folder and collect candidates
   (``scripts/photo_sources.py``):
   * enlightenment-data: each ``backgrounds/*.edj`` (an Eet archive) is scanned
     for embedded JPEG streams (``FF D8 FF`` ... ``FF D9``, walked marker by
     marker); the largest stream that Pillow decodes is the photo.
   * lomiri-wallpapers-*: each ``usr/share/backgrounds/*.jpg``.
   * plasma-workspace-wallpapers: for each wallpaper, the largest image (by
     pixel count) in ``contents/images/``.
   * mate-backgrounds: each image under ``usr/share/backgrounds/mate/``
     (source name ``nature/LadyBird.jpg``); lxqt-themes: each image in
     ``usr/share/lxqt/wallpapers/``.
3. Keep only the sources listed under "photos" in ``scripts/photo_list.json``
   (package + source name -> short id, licence, set); the "excluded" list
   names the drawings / renders / too small images that are dropped and why.
   A candidate in neither list is reported (use ``--review DIR`` to write
   thumbnails and decide).
4. Each kept photo: EXIF orientation applied, converted to RGB, halved with
   Pillow ``Image.reduce(2)`` (2x2 box average, which also averages away the
   JPEG blocking of the q70-90 wallpapers); a photo that would still be larger
   than MAX_MP_AFTER_HALVING (8) megapixels is reduced by 4 instead (halved
   twice; none of the photos kept now is that large).  An odd last row/column
   is dropped first so every pixel is a full box average.  Saved as PNG.
5. Split: the ids under "val_ids" (4 photos of the plasma set) go to ``val/``
   and those under "val_texture_ids" (4 texture-rich photos) to
   ``val-texture/``, as non-overlapping 640x400 crops (grid centred in the
   photo, the margin left over is dropped); every other photo goes whole to
   ``train/``.

Photo sets: each listed photo belongs to a set ("base": the landscape set of
the first version, the default when a photo names none; "texture": close-ups
of flowers, insects, wood, ...).  ``--sets`` picks which (default: all);
``--sets base`` rebuilds exactly the first version's ``train/`` and ``val/``.

Re-running is cheap: a ``manifest.json`` in the output folder records what was
made from which list; when it matches and every file is present nothing is
redone (``--force`` rebuilds).  Stale PNGs in the split folders are removed.

Only the standard library and Pillow are used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

try:
    from PIL import Image, ImageOps
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("fetch_photos: error: Pillow is required (pip install pillow)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_sources import FetchError, extract_deb, fetch_debs, find_candidates, log  # noqa: E402

PACKAGES = (  # in fetch order; only those holding a selected photo are fetched
    "enlightenment-data",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "plasma-workspace-wallpapers",
    "mate-backgrounds",
    "lxqt-themes",
)
SETS = ("base", "texture")
SPLITS = ("train", "val", "val-texture")
MAX_MP_AFTER_HALVING = 8.0  # megapixels; above this a photo is halved again
VAL_CROP = (640, 400)  # width, height: a halved 1280x800 validation photo gives 4 crops, all of it used
SCRIPT_VERSION = 1  # bump when the processing changes (invalidates manifests)

HERE = Path(__file__).resolve().parent
DEFAULT_LIST = HERE / "photo_list.json"


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
    val, vt = data.get("val_ids", []), data.get("val_texture_ids", [])
    for key, chosen in (("val_ids", val), ("val_texture_ids", vt)):
        unknown = set(chosen) - set(ids)
        if unknown:
            raise FetchError(f"photo list {path}: {key} not among photos: {sorted(unknown)}")
    if set(val) & set(vt):
        raise FetchError(f"photo list {path}: ids in both val_ids and val_texture_ids")
    bad = sorted({p.get("set", "base") for p in data["photos"]} - set(SETS))
    if bad:
        raise FetchError(f"photo list {path}: unknown sets {bad} (known: {', '.join(SETS)})")
    return data


def select(data: dict, sets) -> dict:
    """The photos of *sets* and the validation ids among them."""
    photos = [p for p in data["photos"] if p.get("set", "base") in sets]
    ids = {p["id"] for p in photos}
    return {
        "photos": photos,
        "val_ids": [i for i in data.get("val_ids", []) if i in ids],
        "val_texture_ids": [i for i in data.get("val_texture_ids", []) if i in ids],
    }


def _list_digest(sel: dict) -> str:
    fields = {"photos": sel["photos"], "val_ids": sel["val_ids"],
              "v": SCRIPT_VERSION, "max_mp": MAX_MP_AFTER_HALVING, "crop": VAL_CROP}
    if sel["val_texture_ids"]:  # absent for the base set: its digest stays that of the first version
        fields["val_texture_ids"] = sel["val_texture_ids"]
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def _summary(out: Path, manifest: dict) -> None:
    for split in SPLITS:
        files = manifest["files"].get(split, [])
        mp = sum(f["w"] * f["h"] for f in files) / 1e6
        if split == "train":
            log(f"{split}: {len(files)} photos, {mp:.1f} MP  ({out / split})")
        elif files:
            nsrc = len({f["id"] for f in files})
            log(f"{split}: {len(files)} crops {VAL_CROP[0]}x{VAL_CROP[1]} from {nsrc} photos, "
                f"{mp:.1f} MP  ({out / split})")
    for pkg, row in manifest.get("by_package", {}).items():
        log(f"  {pkg:<28} {row['photos']:>3} photos {row['mp']:6.1f} MP  ({', '.join(row['licences'])})")


def _up_to_date(out: Path, digest: str) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("list_digest") != digest:
        return None
    for split in SPLITS:
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
        stem = f"{status}__{pkg}__{Path(name).with_suffix('').as_posix()}".replace("/", "_")
        im.save(review / f"{stem}.jpg", quality=90)
        log(f"review: {stem}.jpg  ({size[0]}x{size[1]})")


def gather_candidates(tmp: Path, debs: dict, packages) -> dict:
    candidates: dict[tuple[str, str], object] = {}
    for pkg in packages:
        root = tmp / pkg
        log(f"dpkg -x {debs[pkg].name}")
        extract_deb(debs[pkg], root)
        for name, src in find_candidates(pkg, root).items():
            candidates[(pkg, name)] = src
    log(f"{len(candidates)} candidate images in {len(packages)} packages")
    return candidates


def check_listed(candidates: dict, listed: dict, photos) -> list:
    """Warn about unlisted candidates (returned); fail if a listed photo is missing."""
    unlisted = sorted(k for k in candidates if k not in listed)
    if unlisted:
        names = ", ".join(f"{p}/{n}" for p, n in unlisted)
        log(f"warning: {len(unlisted)} candidates not in the photo list (ignored): {names}")
    missing = [p for p in photos if (p["package"], p["source"]) not in candidates]
    if missing:
        p = missing[0]
        raise FetchError(
            f"{len(missing)} listed photos not found in the packages, e.g. {p['package']}/{p['source']}"
            " (package version changed? run with --review DIR)"
        )
    return unlisted


def make_outputs(out: Path, sel: dict, candidates: dict) -> tuple[dict, dict]:
    """Write every selected photo; return the files per split and the per-package totals."""
    crop_split = {i: "val" for i in sel["val_ids"]}
    crop_split.update({i: "val-texture" for i in sel["val_texture_ids"]})
    made: dict[str, list] = {split: [] for split in SPLITS}
    by_package: dict[str, dict] = {}
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    for p in sel["photos"]:
        im, factor = to_clean_rgb(open_source(candidates[(p["package"], p["source"])]))
        split = crop_split.get(p["id"], "train")
        if split != "train":
            for r, c, crop in val_crops(im):
                fname = f"{p['id']}_r{r}c{c}.png"
                crop.save(out / split / fname)
                made[split].append({"file": fname, "id": p["id"], "w": crop.size[0], "h": crop.size[1]})
        else:
            fname = f"{p['id']}.png"
            im.save(out / "train" / fname)
            made["train"].append({"file": fname, "id": p["id"], "w": im.size[0], "h": im.size[1],
                                  "downscale": factor})
        row = by_package.setdefault(p["package"], {"photos": 0, "mp": 0.0, "licences": []})
        row["photos"] += 1
        row["mp"] = round(row["mp"] + im.size[0] * im.size[1] / 1e6, 3)
        if p["licence"] not in row["licences"]:
            row["licences"].append(p["licence"])
        log(f"  {p['id']:<22} {p['package']}/{p['source']} -> 1/{factor}: {im.size[0]}x{im.size[1]} {split}")
    return made, by_package


def remove_stale(out: Path, made: dict) -> None:
    """Drop PNGs left in the split folders by an earlier list."""
    for split in SPLITS:
        keep = {f["file"] for f in made.get(split, [])}
        for f in (out / split).glob("*.png"):
            if f.name not in keep:
                f.unlink()


def run(args) -> int:
    out, cache = Path(args.out), Path(args.cache)
    data = load_list(Path(args.list))
    sel = select(data, args.sets)
    digest = _list_digest(sel)
    if not (args.force or args.update) and args.review is None:
        manifest = _up_to_date(out, digest)
        if manifest is not None:
            log(f"{out}: up to date (use --force to rebuild)")
            _summary(out, manifest)
            return 0

    needed = {p["package"] for p in sel["photos"]}
    unknown = sorted(needed - set(PACKAGES))
    if unknown:
        raise FetchError(f"no candidate rule for packages {unknown}")
    packages = [p for p in PACKAGES if p in needed]
    debs = fetch_debs(cache, packages, update=args.update)

    listed = {(p["package"], p["source"]): "kept" for p in data["photos"]}
    listed.update({(x["package"], x["source"]): "excluded" for x in data.get("excluded", [])})

    with tempfile.TemporaryDirectory(prefix="fetch_photos_") as tmp:
        candidates = gather_candidates(Path(tmp), debs, packages)
        if args.review is not None:
            write_review(Path(args.review), candidates, listed)
            return 0
        unlisted = check_listed(candidates, listed, sel["photos"])
        made, by_package = make_outputs(out, sel, candidates)
    remove_stale(out, made)

    n_excl = sum(1 for k in candidates if listed.get(k) == "excluded")
    manifest = {
        "list_digest": digest,
        "script_version": SCRIPT_VERSION,
        "sets": list(args.sets),
        "debs": {k: v.name for k, v in sorted(debs.items())},
        "kept": len(sel["photos"]),
        "excluded": n_excl,
        "by_package": by_package,
        "files": made,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"kept {len(sel['photos'])} photos, dropped {n_excl} listed non-photos"
        + (f", ignored {len(unlisted)} unlisted" if unlisted else ""))
    _summary(out, manifest)
    return 0


def _sets_arg(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in SETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"sets are a comma list of {', '.join(SETS)}; got {text!r}")
    return tuple(n for n in SETS if n in names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/photos", help="output folder (default: data/photos)")
    ap.add_argument("--cache", default="data/cache/debs", help="where .deb files are kept (default: data/cache/debs)")
    ap.add_argument("--list", default=str(DEFAULT_LIST), help="photo list JSON (default: scripts/photo_list.json)")
    ap.add_argument("--sets", type=_sets_arg, default=SETS, metavar="LIST",
                    help=f"photo sets to build, comma separated (default: {','.join(SETS)}; "
                         "'base' alone rebuilds the first version's train/ and val/)")
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
