"""``irae benchmark quality``: the degraded input, the classical methods and each model, scored per image.

The steps, each its own function: resolve the source into levels and units
(:mod:`.units`), load the models, restore one unit with every row's method,
score it, let the :class:`SheetPicker` keep what the comparison sheet shows,
and aggregate the per-image rows into the report.
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path

import torch

from .. import degradations as dg
from ..backends import check_backend
from ..classical import EXTRA, NAMES as CLASSICAL_NAMES, for_task
from ..errors import ImageError, IraeError
from ..inference import Restorer, pick_device
from ..pixels import levels_u8
from ..metrics import compute_all, mean_ignoring_inf, metric_keys, psnr, ssim
from ..onnx_export import export_source
from ..tasks import Task, get_task
from .classical_rows import ClassicalRows
from .common import QUALITY_SCHEMA
from ..environment import versions
from .models import LoadedModel, load_model
from .units import Unit, resolve_source

INPUT_ROW = "input"
ENSEMBLE_SUFFIX = " x8"  # the self-ensemble row of a network
RESERVED_NAMES = (INPUT_ROW, *CLASSICAL_NAMES, "degraded", "clean")


def quality(source: str | Path, *, task: str, weights: str | None = None, compare: list[tuple[str, str]] = (),
            sigmas=None, qualities=None, masks=None, hole_range: tuple[float, float] | None = None,
            noise_protocol: str | None = None, seed: int = 0, device: str = "auto", dtype: str = "auto",
            tile: int | str = "auto", batch_size: int = 4, sheet: str | Path | None = None,
            sheet_crop: int = 128, sheet_images: int = 8, sheet_crop_mode: str = "worst",
            overwrite: bool = False, progress=None, classical: str = "all", workers: int = 1,
            self_ensemble: bool = False, backend: str = "auto", known_sigma: bool = False) -> dict:
    """Score the degraded input, the task's classical methods, and each model on one image set.

    ``source`` is a clean image folder or file, degraded here exactly as
    ``irae degrade`` would with the same ``seed`` and options (defaults: sigma
    15,25,50 clip; quality 10,20,30,40 at 4:2:0; masks box,strokes with hole
    ratio 0.05-0.4) -- or an ``irae degrade`` set (its ``manifest.jsonl`` or
    the folder holding it), whose files are used as they are.  ``weights``
    (name or path; default: the task's shipped default) and ``compare``
    (name, weights) pairs are the models.  Returns the
    ``irae.benchmark.quality/1`` dict; writes ``sheet`` (PNG) when given.
    A sheet that cannot be saved leaves ``settings["sheet"]["error"]`` and the rest of the result.
    Unreadable images are listed under ``failures`` and skipped.  ``classical``
    (all, none or names) picks the classical rows (``irae_cli.classical``);
    those whose package is missing are listed in ``settings["classical"]``;
    ``workers`` > 1 runs them in that many processes beside the networks.
    ``self_ensemble`` adds a row ``NAME x8`` per network: the mean over the 8
    flips and turns of each image.  ``known_sigma``: see ``restore_unit``.
    """
    t = get_task(task)
    check_backend(backend, device, dtype)
    images = resolve_source(Path(source), task, seed=seed, sigmas=sigmas, qualities=qualities, masks=masks,
                            hole_range=hole_range, noise_protocol=noise_protocol)
    settings = images.settings()
    loaded = load_models(task, weights, compare)
    restorers, dev = _restorers(loaded, t, settings, device=device, dtype=dtype, tile=tile, batch_size=batch_size,
                                self_ensemble=self_ensemble, backend=backend, known_sigma=known_sigma)
    models, methods = model_rows(task, classical, loaded, settings, self_ensemble)
    names = list(models)
    picker = None if sheet is None else SheetPicker(
        names, lead=loaded[0].name if loaded else INPUT_ROW, crop=sheet_crop, per_level=sheet_images,
        mode=sheet_crop_mode, hole=t.needs_mask)
    failures: list[dict] = []
    per: dict[tuple[str, str], list[dict]] = {}
    with ClassicalRows(methods, workers) as classical_rows:
        for unit, classical_outputs in classical_rows.run(scorable(images.units(failures, settings), failures)):
            outputs = restore_unit(unit, t, classical_outputs, restorers, failures, known_sigma)
            if outputs is None:
                continue
            for i, (level, rows) in enumerate(score_unit(unit, outputs, names, task)):
                for name, row in rows.items():
                    per.setdefault((name, level), []).append(row)
                if picker is not None:
                    picker.offer(unit, i, outputs, rows)
            if progress is not None:
                progress(unit.image)
    if not per:
        raise IraeError(f"no image could be benchmarked ({failures[0]['error'] if failures else 'no images'})")
    settings["n_images"] = len({r["image"] for rows in per.values() for r in rows})
    result = {"schema": QUALITY_SCHEMA, "settings": settings, "versions": versions(dev), "models": models,
              "results": aggregate(per, names, task), "failures": failures}
    if picker is not None:
        _write_sheet(picker, sheet, overwrite, settings)
    return result


def _restorers(loaded, t, settings: dict, *, device, dtype, tile, batch_size, self_ensemble, backend, known_sigma):
    """One ``Restorer`` per network row (and its x8 row), as ``irae restore`` would run it; the settings say
    which device, dtype and backend they run on (and where conditioned networks' noise levels come from)."""
    # Task parameters as 'irae restore' merges them: the task's defaults, then what the weights file says.
    restorers = [(lm.name + suffix, Restorer(lm.model, t,
                                             task_params=t.params_for_weights(lm.task_params, lm.model.config.channels),
                                             device=device, dtype=dtype, tile=tile, batch_size=batch_size,
                                             self_ensemble=bool(suffix), backend=backend,
                                             source=export_source(lm.sha256)))
                 for lm in loaded for suffix in ("", ENSEMBLE_SUFFIX)[:1 + self_ensemble]]
    dev = restorers[0][1].device if restorers else pick_device(device)
    dtype_name = str(restorers[0][1].dtype).removeprefix("torch.") if restorers else "float32"
    backends = ", ".join(dict.fromkeys(r.backend for _, r in restorers)) or None
    settings.update({"device": str(dev), "dtype": dtype_name, "backend": backends, "tile": tile,
                     "batch_size": batch_size, "n_images": 0, "sheet": None})
    _model_sigma_setting(restorers, known_sigma, settings)
    return restorers, dev


def _model_sigma_setting(restorers: list, known_sigma: bool, settings: dict) -> None:
    """Where the conditioned networks' levels come from, in the settings; --known-sigma needs a network
    conditioned on sigma (a quality-conditioned one always reads each file's quality, as restore does)."""
    if any(r.needs_given_level for _, r in restorers):
        settings["model_quality"] = "read from each file's quantisation tables"
    if not any(r.conditioned and not r.needs_given_level for _, r in restorers):
        if known_sigma:
            raise IraeError("--known-sigma is for weights conditioned on the noise level (irae train --condition "
                            "sigma); these are not")
        return
    settings["model_sigma"] = "known" if known_sigma else "estimated"


def file_qualities(unit: Unit) -> torch.Tensor:
    """The JPEG quality of each level of ``unit`` as restore reads it from the file: a quality-conditioned
    network's levels."""
    if any(q is None for q in unit.source_quality) or len(unit.source_quality) != len(unit.levels):
        raise IraeError(f"{unit.image}: no JPEG quality in the degraded file's tables, which weights conditioned "
                        f"on the JPEG quality need; benchmark a clean folder or a set of JPEG files")
    return torch.tensor([float(q) for q in unit.source_quality])


def _levels_of(unit: Unit, restorer, known_sigma: bool) -> torch.Tensor | None:
    """What a network is told of each level of ``unit``: nothing (blind, or a sigma it estimates), the
    true sigma (``known_sigma``), or the file's JPEG quality (a quality-conditioned network)."""
    if restorer.needs_given_level:
        return file_qualities(unit)
    return known_levels(unit) if known_sigma and restorer.conditioned else None


def known_levels(unit: Unit) -> torch.Tensor:
    """The sigma each level of ``unit`` was degraded with (its drawn or fixed value)."""
    sigmas = []
    for level, p in zip(unit.levels, unit.params):
        sigma = p.get("sigma")
        if sigma is None and "sigma_range" in p and p["sigma_range"][0] == p["sigma_range"][1]:
            sigma = p["sigma_range"][0]
        if sigma is None:
            raise IraeError(f"{unit.image}: level {level} records no sigma to restore at; leave out --known-sigma")
        sigmas.append(float(sigma))
    return torch.tensor(sigmas)


def _write_sheet(picker, sheet, overwrite: bool, settings: dict) -> None:
    """The comparison sheet; a failure to save it is recorded in the settings, not raised."""
    try:
        settings["sheet"] = picker.write(sheet, overwrite=overwrite)
    except ImageError as e:
        # The scores stand without the picture: a sheet that cannot be saved must not take the report with it.
        settings["sheet"] = {"path": str(sheet), "error": str(e)}


# --------------------------------------------------------------------------- the rows: methods and models

def load_models(task: str, weights: str | None, compare) -> list[LoadedModel]:
    """The networks to score: ``weights`` (default: the task's shipped one) then each ``compare`` pair."""
    if weights is None and not compare:
        from ..weights import require_default_weights

        weights = require_default_weights(task)
    specs = ([(None, weights)] if weights is not None else []) + list(compare)
    loaded: list[LoadedModel] = []
    for name, w in specs:
        lm = load_model(w, name=name, task=task)
        if lm.name in RESERVED_NAMES or any(lm.name == o.name for o in loaded):
            raise IraeError(f"model name {lm.name!r} is reserved or used twice; name it with --compare NAME=WEIGHTS")
        loaded.append(lm)
    return loaded


def model_rows(task: str, classical: str, loaded: list[LoadedModel], settings: dict,
               self_ensemble: bool = False) -> tuple[dict, list]:
    """The report's ``models`` (input, classical methods, networks, each followed by its self-ensemble row when
    asked; the row order) and the classical methods.

    Records in ``settings["classical"]`` which classical rows run and which miss their package.
    """
    models = {INPUT_ROW: {"weights": None, "sha256": None, "arch": "degraded input", "params": 0}}
    try:
        methods, missing = for_task(task, classical)
    except ValueError as e:
        raise IraeError(str(e)) from None
    for m in methods:
        models[m.name] = {"weights": None, "sha256": None, "arch": m.describe, "params": 0, "classical": True,
                          "licence": m.licence}
    settings["classical"] = {"rows": [m.name for m in methods], "missing": [m.name for m in missing],
                             "install": EXTRA if missing else None}
    for lm in loaded:
        models[lm.name] = lm.entry()
        if self_ensemble:
            if lm.name + ENSEMBLE_SUFFIX in {o.name for o in loaded}:
                raise IraeError(f"model name {lm.name + ENSEMBLE_SUFFIX!r} is also the self-ensemble row of "
                                f"{lm.name!r}; name it otherwise with --compare NAME=WEIGHTS")
            models[lm.name + ENSEMBLE_SUFFIX] = {**lm.entry(), "self_ensemble": 8}
    return models, methods


def scorable(units, failures: list[dict]):
    """The units big enough to score; the others are recorded as failures before any method runs."""
    for unit in units:
        if min(unit.clean.shape[-2:]) < 11:
            failures.append({"image": unit.image, "error": f"{unit.image}: smaller than the 11x11 SSIM window; "
                                                           f"not scored"})
        else:
            yield unit


def restore_unit(unit: Unit, t: Task, classical_outputs: dict[str, torch.Tensor], restorers: list,
                 failures: list[dict], known_sigma: bool = False) -> dict[str, torch.Tensor] | None:
    """Every row's (L,C,H,W) output for one unit; None (and a failure recorded) when a network cannot run.
    A sigma-conditioned network is told each level's estimated sigma, or with ``known_sigma`` its true one;
    a quality-conditioned one each level's JPEG quality as its file holds it."""
    outputs: dict[str, torch.Tensor] = {}
    if t.needs_mask:  # the input row shows the holes as the model receives them, filled with the task's value
        fill_value = float(t.default_task_params().get("fill", 0.5))
        outputs[INPUT_ROW] = dg.apply_holes(unit.degraded, unit.masks, fill_value)
    else:
        outputs[INPUT_ROW] = unit.degraded
    outputs.update(classical_outputs)
    try:
        for name, restorer in restorers:
            levels = _levels_of(unit, restorer, known_sigma)
            outputs[name] = _kept_where_passed_through(restorer(unit.degraded, unit.masks, levels), unit, t,
                                                       restorer)
    except IraeError as e:
        failures.append({"image": unit.image, "error": f"{unit.image}: {e}"})
        return None
    return outputs


def _kept_where_passed_through(restored: torch.Tensor, unit: Unit, t: Task, restorer) -> torch.Tensor:
    """What ``irae restore`` writes: levels whose JPEG these weights pass through are the input itself."""
    keep = [i for i, q in enumerate(unit.source_quality) if t.passes_through(restorer.task_params, q)]
    if keep:
        restored = restored.clone()
        restored[keep] = unit.degraded[keep].to(restored.dtype)
    return restored


# --------------------------------------------------------------------------- scores

def score_unit(unit: Unit, outputs: dict[str, torch.Tensor], names: list[str], task: str
               ) -> list[tuple[str, dict[str, dict]]]:
    """Per level of ``unit``, in order: (level, {row name: per-image metrics})."""
    out = []
    for i, level in enumerate(unit.levels):
        mask = unit.masks[i] if unit.masks is not None else None
        rows = {}
        for name in names:
            if name == INPUT_ROW and unit.params[i].get("protocol") == "float":
                m = _unrounded_metrics(outputs[name][i], unit.clean, task)
            else:
                m = compute_all(outputs[name][i], unit.clean, task=task, mask=mask)
            rows[name] = {"image": unit.image, **m}
            if mask is not None:
                rows[name]["hole_ratio"] = float(mask.float().mean().item())
        out.append((level, rows))
    return out


def _unrounded_metrics(x: torch.Tensor, clean: torch.Tensor, task: str) -> dict[str, float]:
    """The figures of a float-protocol input as the models receive it: unclipped and unrounded.

    Outputs are rounded to 8-bit levels because that is what a restorer saves;
    the float input is never saved, and rounding it would clip the noise and
    flatter the starting point.  The clean image is 8-bit already, so its exact
    levels are used.
    """
    c = levels_u8(clean)
    out = {"psnr_rgb_u8": psnr(x, c, channel="rgb", round_u8=False),
           "psnr_y601_u8": psnr(x, c, channel="y", round_u8=False),
           "ssim_rgb_u8": ssim(x, c, channel="rgb", round_u8=False),
           "ssim_y601_u8": ssim(x, c, channel="y", round_u8=False)}
    return {k: out[k] for k in metric_keys(task)}


def aggregate(per: dict[tuple[str, str], list[dict]], names: list[str], task: str) -> list[dict]:
    """One result per (row, level), levels in the order first seen: means without inf, inf counted apart."""
    keys = metric_keys(task)
    level_order = list(dict.fromkeys(level for _, level in per))
    results = []
    for name in names:
        for level in level_order:
            rows = per.get((name, level), [])
            means, n_inf = {}, {}
            for k in keys:
                fm = mean_ignoring_inf(r[k] for r in rows)
                means[k] = math.inf if fm.n_finite == 0 and fm.n_inf else fm.mean
                n_inf[k] = fm.n_inf
            if get_task(task).needs_mask:
                means["hole_ratio"] = statistics.fmean(r["hole_ratio"] for r in rows)
            results.append({"model": name, "level": level, "n_images": len(rows), "metrics": means,
                            "n_inf": n_inf, "per_image": rows})
    return results


# --------------------------------------------------------------------------- the comparison sheet

class SheetPicker:
    """Keeps the first ``per_level`` (image, level) crops of each level, then renders and writes the sheet.

    Each crop is cut where the ``lead`` row errs most (or the centre), so a
    reader sees where the model struggles; its labels are the whole image's
    PSNR (hole PSNR for inpainting), the figure the table reports.
    """

    def __init__(self, names: list[str], *, lead: str, crop: int, per_level: int, mode: str, hole: bool):
        self.names, self.lead, self.crop, self.per_level, self.mode, self.hole = \
            names, lead, crop, per_level, mode, hole
        self.rows: list = []  # sheet.SheetRow, in the order offered
        self.taken: dict[str, int] = {}

    def offer(self, unit: Unit, i: int, outputs: dict[str, torch.Tensor], scores: dict[str, dict]) -> None:
        """Level ``i`` of ``unit`` with each row's output and per-image scores; kept while its level has room."""
        from .sheet import SheetRow, crop_box

        level = unit.levels[i]
        if self.taken.get(level, 0) >= self.per_level:
            return
        self.taken[level] = self.taken.get(level, 0) + 1
        error = ((outputs[self.lead][i].float() - unit.clean.float()) ** 2).mean(dim=0)
        box = crop_box(error, self.crop, self.mode)
        main = "psnr_hole_rgb_u8" if self.hole else "psnr_rgb_u8"
        labels = {n: self._label(scores[n][main]) for n in self.names}
        labels["degraded"] = labels.pop(INPUT_ROW)
        outs = {n: self._cut(outputs[n][i], box) for n in self.names if n != INPUT_ROW}
        self.rows.append(SheetRow(title=unit.image, level=level, degraded=self._cut(outputs[INPUT_ROW][i], box),
                                  clean=self._cut(unit.clean, box), outputs=outs, labels=labels, box=(0, 0)))

    def write(self, path: str | Path, *, overwrite: bool) -> dict:
        """Render the kept rows grouped by level (levels in the order first seen) to ``path``; its settings entry."""
        from ..files import atomic_write_bytes
        from .sheet import render_sheet

        order = {lv: k for k, lv in enumerate(dict.fromkeys(r.level for r in self.rows))}
        rows = sorted(self.rows, key=lambda r: order[r.level])
        img = render_sheet(rows, [n for n in self.names if n != INPUT_ROW], crop=self.crop)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
        return {"path": str(path), "crop": self.crop, "crop_mode": self.mode, "rows": len(rows),
                "size": list(img.size)}

    def _cut(self, x: torch.Tensor, box: tuple[int, int]) -> torch.Tensor:
        top, left = box
        return x[..., top:top + self.crop, left:left + self.crop].clone()

    def _label(self, v: float) -> str:
        text = "exact" if v == math.inf else f"{v:.2f} dB"
        return f"hole {text}" if self.hole else f"PSNR {text}"
