"""Write into JPEG weights the highest quality up to which they were measured to improve their input.

    python scripts/jpeg_quality_limit.py WEIGHTS QUALITY.json [--name MODEL] [--out SHIPPED]

QUALITY.json is `irae benchmark quality --task jpeg --json` of these weights *without* a limit,
over a ladder of qualities (e.g. 10,15,...,95).  The limit is the highest measured quality q such
that the model's mean `psnr_rgb_u8` and `psnr_y601_u8` are both at least the input's at q and at
every lower measured quality; it is stored as `task_params["max_quality"]`, and `irae restore` (and
the benchmark) keep JPEG files above it as they are.  Both conventions, because near the top of the
ladder a model can gain a little colour while losing luma detail (the channel JPEG tables and eyes
weigh most), and such a file is better left alone.  The weights are written to --out (default: in
place); their training summary is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from irae_cli.weights import load_weights, save_weights  # noqa: E402

METRICS = ("psnr_rgb_u8", "psnr_y601_u8")


def quality_limit(result: dict, model: str) -> tuple[int | None, list[tuple[int, tuple[float, ...]]]]:
    """(limit or None when the model is below its input even at the lowest quality, per-quality margins
    in dB, one per METRICS entry)."""
    by = {(e["model"], e["level"]): e["metrics"] for e in result["results"]}
    levels = sorted((int(p["quality"]), name) for name, p in result["settings"]["levels"].items())
    margins = [(q, tuple(by[(model, name)][k] - by[("input", name)][k] for k in METRICS)) for q, name in levels]
    limit = None
    for q, margin in margins:
        if min(margin) < 0:
            break
        limit = q
    return limit, margins


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights")
    ap.add_argument("quality_json")
    ap.add_argument("--name", help="the model's row in the JSON (default: the weights file's stem)")
    ap.add_argument("--out", help="write here instead of in place")
    args = ap.parse_args(argv)
    result = json.loads(Path(args.quality_json).read_text())
    name = args.name or Path(args.weights).stem
    limit, margins = quality_limit(result, name)
    for q, margin in margins:
        print(f"q{q}: " + ", ".join(f"{k} {m:+.3f}" for k, m in zip(METRICS, margin)) + " dB over the input")
    if limit is None:
        print("below the input at the lowest measured quality: no limit written", file=sys.stderr)
        return 1
    loaded = load_weights(args.weights, device="cpu", expect_task="jpeg")
    params = {**loaded.task_params, "max_quality": limit}
    out = Path(args.out or args.weights)
    save_weights(loaded.model, out, task="jpeg", task_params=params, training=loaded.training)
    print(f"{out}: max_quality {limit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
