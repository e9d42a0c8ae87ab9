"""Write into JPEG weights the highest quality up to which they were measured to improve their input.

    python scripts/jpeg_quality_limit.py WEIGHTS QUALITY.json [--name MODEL] [--out SHIPPED]

QUALITY.json is `irae benchmark quality --task jpeg --json` of these weights *without* a limit,
over a ladder of qualities (e.g. 10,15,...,95).  The limit is the highest measured quality q such
that the model's mean `psnr_rgb_u8` is at least the input's at q and at every lower measured
quality; it is stored as `task_params["max_quality"]`, and `irae restore` (and the benchmark) keep
JPEG files above it as they are.  The weights are written to --out (default: in place); their
training summary is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from irae_cli.weights import load_weights, save_weights  # noqa: E402


def quality_limit(result: dict, model: str) -> tuple[int | None, list[tuple[int, float]]]:
    """(limit or None when the model is below its input even at the lowest quality, per-quality margins)."""
    by = {(e["model"], e["level"]): e["metrics"]["psnr_rgb_u8"] for e in result["results"]}
    levels = sorted((int(p["quality"]), name) for name, p in result["settings"]["levels"].items())
    margins = [(q, by[(model, name)] - by[("input", name)]) for q, name in levels]
    limit = None
    for q, margin in margins:
        if margin < 0:
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
        print(f"q{q}: {margin:+.3f} dB over the input")
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
