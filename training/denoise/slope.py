"""How steep is a denoiser's inverse where fp32 rounding meets it?  Float64, on 64x64 crops.

    python training/denoise/slope.py WEIGHTS... [--images 'training/inv/four-s25/sigma25/*.png']

Per weights file: the inverse's gain ||inverse(r + d) - inverse(r)|| / ||d|| (rms) and its worst
pixel per unit rms step (max), for random steps d of size 1e-3 down to 1e-7 around the restored
crops r; and the round trip's error (8-bit levels) when only the restored image is rounded to fp32
(everything else float64) -- the part of the fp32 round trip that a gain bound is meant to control.
A model conditioned on the noise level goes both ways at each crop's estimated sigma, as restore does.
"""

from __future__ import annotations

import argparse
import copy
import glob

import numpy as np
import torch
from PIL import Image

from irae_cli.degradations.estimate import estimate_sigma
from irae_cli.model import conditioned
from irae_cli.weights import load_weights

SIZES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def crops(pattern: str, per_image: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for path in sorted(glob.glob(pattern)):
        a = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        for _ in range(per_image):
            y = torch.randint(0, a.shape[1] - 64, (1,), generator=g).item()
            x = torch.randint(0, a.shape[2] - 64, (1,), generator=g).item()
            out.append(a[:, y:y + 64, x:x + 64])
    if not out:
        raise SystemExit(f"no images match {pattern}")
    return torch.stack(out).double()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--images", default="training/inv/four-s25/sigma25/*.png")
    ap.add_argument("--per-image", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    y = crops(args.images, args.per_image, torch.Generator().manual_seed(0))
    for w in args.weights:
        g = torch.Generator().manual_seed(1)
        m = copy.deepcopy(load_weights(w).model).eval().double()
        level = estimate_sigma(y.float()).double() if conditioned(m.config) else None
        cells = []
        with torch.no_grad():
            r = m(y, level)
            base = m.inverse(r, level)
            for s in SIZES:
                d = torch.randn(r.shape, generator=g, dtype=torch.float64) * s
                e = (m.inverse(r + d, level) - base).flatten(1)
                rms = (e.norm(dim=1) / d.flatten(1).norm(dim=1)).mean().item()
                worst = (e.abs().max(1).values / d.flatten(1).pow(2).mean(1).sqrt()).mean().item()
                cells.append(f"{s:g}: rms {rms:.0f} max {worst:.0f}")
            rounded = (m.inverse(r.float().double(), level) - y).abs().max().item() * 255
        print(f"{w}\n  {' | '.join(cells)}\n  output rounded to fp32 only: max {rounded:.3f} levels")


if __name__ == "__main__":
    main()
