"""``irae benchmark quality --task auto`` on a mixed set (``irae degrade --task auto``): how often each file is
routed right, the noise estimator's error, and the PSNR of ``--task auto`` beside each fixed task.

Every row scores the pixels a run would restore (as ``irae benchmark quality`` does for one task):
``input`` is the file as it is, ``denoise`` and ``jpeg`` what ``--task denoise`` / ``--task jpeg`` give
every file (JPEGs above the JPEG weights' ``max_quality`` pass through, as in a run), ``auto`` the
routed result.  Each file goes through each model once; ``auto`` reuses those outputs.
"""

from __future__ import annotations

import functools
import statistics
from pathlib import Path

import torch

from ..degradations import align_to_blocks, find_jpeg_grid, quality_to_tell
from ..degradations.estimate import estimate_sigma
from ..environment import versions
from ..errors import ImageError, IraeError
from ..imageio import read_image
from ..inference import Restorer
from ..metrics import compute_all, mean_ignoring_inf
from ..routing import DENOISE_FROM_SIGMA, header_quality, jpeg_max_quality, right_route, route
from ..tasks import get_task
from ..testset.manifest import read_manifest
from .common import QUALITY_SCHEMA
from .models import load_model

ROWS = ("input", "denoise", "jpeg", "auto")
ALL = "all"
# The set's mean PSNR leaves out its clean members: left as they are they score inf (exact), and a mean
# without them compares the rows on the files that had something to restore (the clean level shows them).
DEGRADED = "all degraded"


def auto_quality(source: str | Path, *, device: str = "auto", dtype: str = "auto", tile: int | str = "auto",
                 batch_size: int = 4, progress=None) -> dict:
    """Score routing and restoration on the mixed set whose manifest is ``source`` (or in the folder)."""
    path = Path(source)
    root = path if path.is_dir() else path.parent
    entries = read_manifest(path, verify=True)
    max_quality = jpeg_max_quality()
    restorers, models = _restorers(device, dtype, tile, batch_size)
    per_image, failures = [], []
    for entry in entries:
        try:
            per_image.append(_score(entry, root, restorers, max_quality))
        except (ImageError, IraeError) as e:
            failures.append({"image": entry["id"], "error": str(e)})
        if progress is not None:
            progress(entry["id"])
    if not per_image:
        raise IraeError(f"no file of {path} could be benchmarked ({failures[0]['error'] if failures else 'empty'})")
    dev = restorers["denoise"].device
    settings = {"task": "auto", "source": str(path), "source_kind": "manifest", "n_images": len(per_image),
                "max_quality": max_quality, "denoise_from_sigma": DENOISE_FROM_SIGMA, "device": str(dev),
                "dtype": str(restorers["denoise"].dtype).removeprefix("torch."), "tile": tile,
                "batch_size": batch_size}
    return {"schema": QUALITY_SCHEMA, "settings": settings, "versions": versions(dev), "models": models,
            "routing": _routing(per_image), "results": _psnr(per_image), "per_image": per_image,
            "failures": failures}


def _restorers(device, dtype, tile, batch_size) -> tuple[dict, dict]:
    from ..weights import require_default_weights

    restorers, models = {}, {}
    for name in ("denoise", "jpeg"):
        lm = load_model(require_default_weights(name), task=name)
        t = get_task(name)
        restorers[name] = Restorer(lm.model, t, task_params=t.params_for_weights(lm.task_params,
                                                                                 lm.model.config.channels),
                                   device=device, dtype=dtype, tile=tile, batch_size=batch_size)
        models[name] = lm.entry()
    return restorers, models


def _score(entry: dict, root: Path, restorers: dict, max_quality: int | None) -> dict:
    """One file: its route (measured as a run does) and the right one, and each row's metrics."""
    file = root / entry["degraded"]
    x, meta = read_image(file)
    clean, _ = read_image(root / entry["clean"])
    quality = header_quality(file)
    sigma = estimate_sigma(x)
    got = route(quality, max_quality, sigma)
    outputs = {"input": x, "denoise": restorers["denoise"](x[None])[0]}
    outputs["jpeg"], jpeg_told = _jpeg_row(restorers["jpeg"], x, quality, meta.header_grid)
    outputs["auto"] = x if got.task is None else outputs[got.task]
    metrics = {row: compute_all(outputs[row], clean, task="denoise") for row in ROWS}
    return {"id": entry["id"], "level": entry["level"], "task": entry["task"], "params": entry["params"],
            "route": got.name, "route_reason": got.describe(),
            "right_route": right_route(entry["task"], entry["params"], max_quality),
            "sigma_estimate": round(sigma, 3), "jpeg_quality": quality, **jpeg_told, "metrics": metrics}


def _jpeg_row(jpeg: Restorer, x: torch.Tensor, quality: int | None,
              header_grid: tuple[int, int] | None) -> tuple[torch.Tensor, dict]:
    """What ``--task jpeg`` gives the file: above ``max_quality`` the file as it is; a quality-conditioned
    model told the header's quality, else the pixels' (as a run tells it); a file that shows none, which
    such a run fails, scores as it is (``jpeg_model_quality`` null).  As in a run, the image is padded so
    that its 8x8 blocks start at its corner (``header_grid``, a JPEG file's, else the one its pixels show)
    and the result cut back."""
    if jpeg.task.passes_through(jpeg.task_params, quality):
        return x, {}
    found = functools.cache(lambda: find_jpeg_grid(x))  # read once, only when the header cannot answer
    told, levels = None, None
    if jpeg.needs_given_level:
        told, _ = quality_to_tell(None, quality, lambda: found()[0])
        if told is None:
            return x, {"jpeg_model_quality": None}
        levels = torch.tensor([float(told)])
    padded, pad, grid = align_to_blocks(x, header_grid, lambda: found()[1])
    restored = jpeg(padded[None], levels=levels)[0][..., pad[0]:, pad[1]:]
    told_row = {"jpeg_model_quality": int(told)} if told is not None else {}
    return restored, {**told_row, **({"jpeg_grid": list(grid)} if pad != (0, 0) else {})}


def _levels(per_image: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["level"] for r in per_image))


def _routing(per_image: list[dict]) -> list[dict]:
    """Per level and for the whole set: files, share routed right, routes taken, the noise estimates."""
    out = []
    for level in [*_levels(per_image), ALL]:
        rows = [r for r in per_image if level in (ALL, r["level"])]
        sigmas = [r["sigma_estimate"] for r in rows]
        true = [r["params"].get("sigma") for r in rows]
        errors = [s - t for s, t in zip(sigmas, true) if t is not None]
        routes: dict[str, int] = {}
        for r in rows:
            routes[r["route"]] = routes.get(r["route"], 0) + 1
        out.append({"level": level, "n_images": len(rows),
                    "right": sum(r["route"] == r["right_route"] for r in rows) / len(rows),
                    "right_route": sorted({r["right_route"] for r in rows}), "routes": routes,
                    "sigma_estimate": {"mean": statistics.fmean(sigmas), "min": min(sigmas), "max": max(sigmas)},
                    "sigma_error": ({"mean": statistics.fmean(errors),
                                     "mean_abs": statistics.fmean(abs(e) for e in errors)} if errors else None)})
    return out


def _psnr(per_image: list[dict]) -> list[dict]:
    """Mean metrics per row and level, then over the degraded files (exact copies, PSNR inf, counted apart)."""
    results = []
    for row in ROWS:
        for level in [*_levels(per_image), DEGRADED]:
            rows = [r["metrics"][row] for r in per_image
                    if r["level"] == level or (level == DEGRADED and r["task"] != "none")]
            if not rows:
                continue
            means, n_inf = {}, {}
            for key in rows[0]:
                fm = mean_ignoring_inf(m[key] for m in rows)
                means[key] = float("inf") if fm.n_finite == 0 and fm.n_inf else fm.mean
                n_inf[key] = fm.n_inf
            results.append({"model": row, "level": level, "n_images": len(rows), "metrics": means,
                            "n_inf": n_inf})
    return results
