"""The screen: rich tables of benchmark results (presentation only; the JSON report holds every figure)."""

from __future__ import annotations

import math
from pathlib import Path

from ..metrics import metric_keys


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == math.inf:
            return "inf"
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def _count(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def quality_table(result: dict):
    from rich.table import Table

    s = result["settings"]
    keys = metric_keys(s["task"])
    n = s.get("n_images", 0)
    table = Table(title=f"irae benchmark quality — {s['task']}, {n} image(s), {s['source']}",
                  caption="mean of per-image values; keys name their conventions (see --json settings)")
    table.add_column("model")
    table.add_column("level")
    for k in keys:
        table.add_column(k, justify="right")
    if s["task"] == "inpaint":
        table.add_column("hole ratio", justify="right")
    table.add_column("params", justify="right")
    for r in result["results"]:
        cells = []
        for k in keys:
            digits = 4 if k.startswith("ssim") else 2
            text = _fmt(r["metrics"][k], digits)
            if r["n_inf"].get(k) and r["metrics"][k] != math.inf:
                text += f" (+{r['n_inf'][k]} exact)"
            cells.append(text)
        if s["task"] == "inpaint":
            cells.append(f"{r['metrics']['hole_ratio']:.1%}")
        table.add_row(r["model"], r["level"], *cells, _count(result["models"][r["model"]]["params"]))
    return table


def speed_table(result: dict):
    from rich.table import Table

    s, m = result["settings"], result["model"]
    label = Path(m["weights"]).name if m["weights"] else m["arch"]
    table = Table(title=f"irae benchmark speed — {label} ({_count(m['params'])} params, "
                        f"{m['mac_per_pixel'] / 1e3:.1f} k MAC/pixel), {s['dtype']} on {result['versions']['device']}",
                  caption=f"torch {result['versions']['torch']}; median and p90 of {s['repeats']} run(s) "
                          f"after {s['warmup']} warm-up")
    rows = result["results"]
    # Rows timed in one run (a baseline, several backends or dtypes): each one's speed against the first.
    versus = len(rows) > 1 and all(r.get("mp_per_s") for r in rows)
    for col in ("mode", "images", "MP", "median s", "p90 s", "MP/s", "images/s", "peak memory",
                *(["x first row"] if versus else [])):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in rows:
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f} MiB"
        if r["peak_memory_bytes"] is not None and r["peak_memory_source"] != "cuda max_memory_allocated":
            mem += " (process)"
        mode = r["mode"]
        if "dtype" in r:
            engine = f"{r['backend']}, " if r.get("backend") else ""
            mode += (f" ({engine}{r['dtype']}{', compiled' if r.get('compile') else ''}"
                     f"{', folded' if r.get('folded') else ''})")
        extra = [f"{r['mp_per_s'] / rows[0]['mp_per_s']:.2f}x"] if versus else []
        if "graph_breaks" in r:
            syncs = "" if r["host_syncs_per_step"] is None else f", {r['host_syncs_per_step']} host syncs/step"
            mode += f" ({r['graph_breaks']} graph breaks{syncs}; compiled in {r['compile_s']} s)"
        table.add_row(mode, str(r["images"]), f"{r['megapixels']:.3g}", f"{r['median_s']:.4f}",
                      f"{r['p90_s']:.4f}", _fmt(r["mp_per_s"], 3), _fmt(r["images_per_s"], 2), mem, *extra)
    return table


def invertibility_table(result: dict):
    from rich.table import Table

    s, c, summ = result["settings"], result["condition_numbers"], result["summary"]
    verdict = "PASS" if summ["passed"] else "FAIL"
    if s["dtype"] == "fp32":
        bar = (f"max error {summ['max_error_levels']:.3f} of one 8-bit level, must be < 0.5; "
               f"{summ['exact_u8_fraction']:.4%} of pixels exact")
    else:
        bar = f"max rel {summ['max_rel_error']:.2e}, tolerance {s['tolerance']:.0e}"
    table = Table(title=f"irae benchmark invertibility — {s['arch']} {s['dtype']} on {s['device']}: {verdict} "
                        f"({bar})",
                  caption=f"1x1 conv condition numbers ({c['count']}): min {_fmt(c['min'], 6)}, "
                          f"max {_fmt(c['max'], 6)}; images {s['fit']}")
    for col in ("image", "size", "rel error", "max error (levels)", "exact 8-bit"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for r in result["results"]:
        table.add_row(r["image"], f"{r['shape'][2]}x{r['shape'][1]}", f"{r['rel_error']:.3e}",
                      f"{r['max_error_levels']:.4f}", f"{r['exact_u8_fraction']:.4%}")
    return table


def auto_tables(result: dict):
    """--task auto: the routing table (per level) and the quality table (each row per level)."""
    from rich.table import Table

    s = result["settings"]
    routing = Table(title=f"irae benchmark quality — auto routing, {s['n_images']} file(s), {s['source']}",
                    caption=f"JPEG quality <= {s['max_quality']} -> jpeg; else estimated sigma >= "
                            f"{s['denoise_from_sigma']:g} -> denoise; else copied")
    for col in ("level", "files", "right route", "routed right", "routes", "sigma est. mean (min-max)",
                "sigma error mean / |mean|"):
        routing.add_column(col, justify="left" if col in ("level", "right route", "routes") else "right")
    for r in result["routing"]:
        est, err = r["sigma_estimate"], r["sigma_error"]
        routing.add_row(r["level"], str(r["n_images"]), ",".join(r["right_route"]), f"{r['right']:.1%}",
                        ", ".join(f"{k} {n}" for k, n in sorted(r["routes"].items())),
                        f"{est['mean']:.2f} ({est['min']:.2f}-{est['max']:.2f})",
                        f"{err['mean']:+.2f} / {err['mean_abs']:.2f}" if err else "-")
    quality = Table(title="PSNR / SSIM of each row (input; --task denoise, jpeg, auto on every file)",
                    caption="mean of per-image values; 'all degraded' leaves out the clean files (inf when copied)")
    keys = list(result["results"][0]["metrics"])
    for col in ("model", "level", *keys):
        quality.add_column(col, justify="left" if col in ("model", "level") else "right")
    for r in result["results"]:
        cells = []
        for k in keys:
            text = _fmt(r["metrics"][k], 4 if k.startswith("ssim") else 2)
            if r["n_inf"].get(k) and r["metrics"][k] != math.inf:
                text += f" (+{r['n_inf'][k]} exact)"
            cells.append(text)
        quality.add_row(r["model"], r["level"], *cells)
    return routing, quality
