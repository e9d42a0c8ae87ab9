"""JPEG restore of decoded JPEGs cut off their 8x8 grid: with and without aligning the blocks.

    OMP_NUM_THREADS=1 python training/jpeg/offgrid.py data/photos/val > training/jpeg/offgrid.txt

Each photo is JPEG-compressed (Pillow, 4:2:0) at q 10 / 20 / 30 / 40, decoded, and cut at a different
offset (1-7 rows and columns, never 0/0), as a crop or a screenshot of a decoded JPEG would be.  Rows:
the input; the default JPEG model told the true quality on the image as it is (what `--input-quality`
gave before restore found the grid); and as `irae restore` now runs it, told the quality the pixels show
and padded so that the blocks start at the origin.  PSNR on uint8 RGB over the whole crop, fp32, CPU.
"""
import sys
from pathlib import Path

import torch
from PIL import Image

from irae_cli.degradations import decode_file, find_jpeg_grid, jpeg_bytes, pad_to_blocks
from irae_cli.inference import Restorer
from irae_cli.pixels import from_pil
from irae_cli.tasks import get_task
from irae_cli.weights import load_weights


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (((a * 255).round() - (b * 255).round()) ** 2).double().mean()
    return float(10 * torch.log10(255.0 ** 2 / mse))


def main() -> None:
    torch.set_num_threads(1)
    loaded = load_weights("irae-jpeg-medium")
    run = Restorer(loaded.model, get_task("jpeg"), task_params=loaded.task_params, device="cpu",
                   dtype="fp32", tile=0)
    files = sorted(Path(sys.argv[1]).glob("*.png"))
    print(f"{len(files)} photos from {sys.argv[1]}; weights irae-jpeg-medium ({loaded.sha256[:12]})")
    print("| quality | input | told the quality, as it is | found grid and quality, aligned | found |")
    print("|---|---|---|---|---|")
    for q in (10, 20, 30, 40):
        sums, found = [0.0, 0.0, 0.0], 0
        for i, f in enumerate(files):
            clean = from_pil(Image.open(f).convert("RGB"))
            decoded, _ = decode_file(jpeg_bytes(clean, q))
            dy, dx = 1 + i % 7, 1 + (3 * i + 2) % 7
            x, ref = decoded[:, dy:, dx:], clean[:, dy:, dx:]
            as_is = run(x[None], levels=torch.tensor([float(q)]))[0]
            quality, grid = find_jpeg_grid(x)
            found += quality is not None and grid == ((8 - dy) % 8, (8 - dx) % 8)
            padded, (pt, pl) = pad_to_blocks(x, grid)  # as irae restore aligns it
            told = float(quality if quality is not None else q)
            aligned = run(padded[None], levels=torch.tensor([told]))[0][:, pt:, pl:]
            for k, y in enumerate((x, as_is, aligned)):
                sums[k] += psnr(y, ref)
        n = len(files)
        print(f"| {q} | {sums[0] / n:.2f} | {sums[1] / n:.2f} | {sums[2] / n:.2f} | {found} / {n} |", flush=True)


if __name__ == "__main__":
    main()
