"""Write a model card for a weights file from what was measured, and optionally register it.

    python scripts/model_card.py weights/irae-denoise.safetensors --name irae-denoise \
        --quality weights/irae-denoise.quality.json --invertibility weights/irae-denoise.invertibility.json \
        --train-command "irae train ..." --note "..." --register --default

Every figure in the card is read from the weights' own training metadata or from
the `irae benchmark` JSON files named on the command line: nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from irae_cli.weights import load_weights, register  # noqa: E402


def fmt(v, nd=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def quality_table(q: dict, names: dict[str, str]) -> list[str]:
    keys = [k for k in ("psnr_rgb_u8", "psnr_y601_u8", "ssim_rgb_u8", "ssim_y601_u8", "psnrb_y601_u8",
                        "psnr_hole_rgb_u8") if any(k in r["metrics"] for r in q["results"])]
    lines = ["| model | level | " + " | ".join(f"`{k}`" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in q["results"]:
        label = names.get(r["model"], r["model"])
        cells = [fmt(r["metrics"].get(k), 4 if k.startswith("ssim") else 2) for k in keys]
        lines.append(f"| {label} | {r['level']} | " + " | ".join(cells) + " |")
    return lines


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--quality", type=Path, help="irae benchmark quality --json output")
    ap.add_argument("--invertibility", type=Path, action="append", default=[],
                    help="irae benchmark invertibility --json output (repeatable: e.g. 1 MP and 4 MP)")
    ap.add_argument("--train-command", default="", help="the command that trained the weights")
    ap.add_argument("--bench-command", action="append", default=[], help="commands that made the JSON files")
    ap.add_argument("--note", action="append", default=[], help="a paragraph of context (repeatable)")
    ap.add_argument("-o", "--out", type=Path, help="card path (default: next to the weights, .md)")
    ap.add_argument("--register", action="store_true", help="add the file to weights/index.json")
    ap.add_argument("--default", action="store_true", help="make it the task's default")
    return ap.parse_args()


def _header(name: str, weights: Path, lw) -> list[str]:
    t = lw.training
    return [f"# {name}", "",
            f"- **File:** `{weights.name}`, sha256 `{lw.sha256}`",
            f"- **Task:** {lw.task}; **architecture:** {lw.metadata['arch']} "
            f"`{lw.metadata['config']}`; **parameters:** {sum(p.numel() for p in lw.model.parameters()):,}",
            f"- **Training data:** {json.dumps(t.get('data', {}), sort_keys=True)}",
            f"- **Degradation:** {json.dumps(t.get('degradation', {}), sort_keys=True)}",
            *([f"- **Task parameters:** `{json.dumps(lw.task_params, sort_keys=True)}`"
               + (" (JPEG files above `max_quality` are kept as they are)" if "max_quality" in lw.task_params
                  else "")] if lw.task_params else []),
            f"- **Run:** {t.get('steps')} steps ({t.get('steps_planned')} planned, stopped: {t.get('stopped')}), "
            f"{t.get('patches_seen', 0):,} patches seen, {t.get('minutes')} min wall-clock on {t.get('device')} "
            f"({t.get('dtype')}), torch {t.get('torch')}, irae {t.get('irae_version')}, seed {t.get('seed')}, "
            f"lr {t.get('lr')}, EMA {t.get('ema')}",
            ]


def _validation(t: dict) -> list[str]:
    if not t.get("val"):
        return []
    lines = ["", f"## Validation during training ({t.get('val_images')} held-out images, centre crop "
                 f"≤ {t.get('val_crop')} px, `psnr_rgb_u8`)", "",
             "| level | input | restored |", "|---|---|---|"]
    for level, v in t["val"].items():
        lines.append(f"| {level} | {fmt(v.get('input_psnr_rgb_u8'))} | {fmt(v.get('psnr_rgb_u8'))} |")
    return lines


def _benchmark(path: Path) -> list[str]:
    q = json.loads(path.read_text())
    s = q["settings"]
    params = {n: m.get("params") for n, m in q["models"].items()}
    lines = ["", f"## Benchmark (`{path.name}`)", "",
             f"{s['n_images']} images from `{s['source']}`, seed {s['seed']}, {s['device']} {s['dtype']}; "
             f"levels {json.dumps(s['levels'], sort_keys=True)}.", "",
             f"Conventions: {s['metric_conventions']}.", ""]
    return lines + quality_table(q, {n: f"{n} ({params[n]:,} params)" if params.get(n) else n for n in params})


def _round_trip(path: Path) -> list[str]:
    inv = json.loads(path.read_text())
    st, sm = inv["settings"], inv["summary"]
    cn = inv.get("condition_numbers") or {}
    return ["", f"Round trip `inverse(forward(y))` on `{st['images']}` at {st['size'] or 'native'} px "
            f"({st['fit']}; {fmt(sm.get('megapixels'))} MP), {st['dtype']} on {st['device']}: largest "
            f"error **{sm['max_error_levels']:.3f} of one 8-bit level**, "
            f"{100 * sm['exact_u8_fraction']:.4f}% of pixels round back exactly — it "
            f"**{'passes' if sm['passed'] else 'FAILS'}** the 8-bit criterion (< {st['tolerance']} of a "
            f"level). Relative error {sm['max_rel_error']:.2e}. 1×1 conv condition numbers: "
            f"{json.dumps(cn, sort_keys=True)}."]


def main() -> None:
    args = _args()
    lw = load_weights(args.weights)
    out = args.out or args.weights.with_suffix(".md")
    lines = _header(args.name, args.weights, lw)
    if args.train_command:
        lines += ["", "Trained with:", "", "```bash", args.train_command, "```"]
    lines += _validation(lw.training)
    if args.quality:
        lines += _benchmark(args.quality)
    if args.invertibility:
        lines += ["", "## Invertibility"]
    for path in args.invertibility:
        lines += _round_trip(path)
    if args.bench_command:
        lines += ["", "Reproduce the figures:", "", "```bash", *args.bench_command, "```"]
    for note in args.note:
        lines += ["", note]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    if args.register:
        register(args.name, args.weights, task=lw.task, default=args.default, card=out.name)
        print(f"registered {args.name} in weights/index.json (default for {lw.task}: {args.default})")


if __name__ == "__main__":
    main()
