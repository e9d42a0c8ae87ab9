"""How well the JPEG quality and block grid are read from decoded pixels (``find_jpeg_grid``): each
image of the folders given is saved by Pillow at each quality (4:2:0), decoded, cut at ``--offset
TOP,LEFT`` (a crop off the encoder's grid; default none), and estimated; prints, per quality, how many
estimates are within 1 of it with the grid right, how many are None and how many are further off (or
on the wrong grid), and the same for the images as they are (never compressed: None is right).

    python scripts/quality_from_pixels.py data/photos/val tests/data [--offset 3,5]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image

from irae_cli.degradations import find_jpeg_grid
from irae_cli.files import discover
from irae_cli.pixels import from_pil

QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def _decoded(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--offset", default="0,0", help="rows,columns cut off the top and left")
    args = ap.parse_args()
    top, left = (int(v) for v in args.offset.split(","))
    grid = ((8 - top) % 8, (8 - left) % 8)  # where the blocks start in the cut image
    images = []
    for folder in args.folders:
        for src in discover(folder, recursive=True):
            img = Image.open(src.path)
            images.append(img.convert("L" if img.mode == "L" else "RGB"))
    megapixels = seconds = 0.0
    print(f"{len(images)} images, offset {top},{left}; quality: within 1 / none / wrong (the wrong estimates)")
    for quality in QUALITIES:
        near = none = 0
        wrong = []
        for img in images:
            x = from_pil(_decoded(img, quality))[:, top:, left:]
            t0 = time.perf_counter()
            estimate, found_grid = find_jpeg_grid(x)
            seconds += time.perf_counter() - t0
            megapixels += x.shape[-1] * x.shape[-2] / 1e6
            if estimate is None:
                none += 1
            elif abs(estimate - quality) <= 1 and found_grid == grid:
                near += 1
            else:
                wrong.append(estimate)
        print(f"q {quality}: {near} / {none} / {len(wrong)} {wrong if wrong else ''}")
    found = [e for e, _ in (find_jpeg_grid(from_pil(img)[:, top:, left:]) for img in images) if e is not None]
    print(f"never compressed: {len(images) - len(found)} none, {len(found)} given a quality {found}")
    print(f"{seconds / megapixels:.2f} s per megapixel")


if __name__ == "__main__":
    main()
