"""How well the JPEG quality is read from decoded pixels (``estimate_quality_from_pixels``): each image
of the folders given is saved by Pillow at each quality (4:2:0), decoded, and estimated; prints, per
quality, how many estimates are within 1 of it, how many are None and how many are further off, and
the same for the images as they are (never compressed: None is right).

    python scripts/quality_from_pixels.py data/photos/val tests/data
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image

from irae_cli.degradations import estimate_quality_from_pixels
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
    args = ap.parse_args()
    images = []
    for folder in args.folders:
        for src in discover(folder, recursive=True):
            img = Image.open(src.path)
            images.append(img.convert("L" if img.mode == "L" else "RGB"))
    megapixels = seconds = 0.0
    print(f"{len(images)} images; quality: within 1 / none / wrong (the wrong estimates)")
    for quality in QUALITIES:
        near = none = 0
        wrong = []
        for img in images:
            x = from_pil(_decoded(img, quality))
            t0 = time.perf_counter()
            estimate = estimate_quality_from_pixels(x)
            seconds += time.perf_counter() - t0
            megapixels += x.shape[-1] * x.shape[-2] / 1e6
            if estimate is None:
                none += 1
            elif abs(estimate - quality) <= 1:
                near += 1
            else:
                wrong.append(estimate)
        print(f"q {quality}: {near} / {none} / {len(wrong)} {wrong if wrong else ''}")
    found = [e for e in (estimate_quality_from_pixels(from_pil(img)) for img in images) if e is not None]
    print(f"never compressed: {len(images) - len(found)} none, {len(found)} given a quality {found}")
    print(f"{seconds / megapixels:.2f} s per megapixel")


if __name__ == "__main__":
    main()
