"""``irae benchmark``: quality, speed and invertibility figures, as plain functions returning dicts.

Every result is a JSON-ready dict with a ``schema`` tag, the ``settings`` that
produced it and the ``versions`` of everything that could change it, so a
number in a README can be traced to one rerunnable command.

* :func:`quality` degrades clean images with fixed seeds (the same functions
  and seeds as ``irae degrade``) or reads a ``degrade`` manifest, restores them
  through :class:`~irae_cli.inference.Restorer` (the ``irae restore`` path)
  and scores every model with :func:`irae_cli.metrics.compute_all` -- the
  paper conventions, each metric key naming its own.  The degraded input is
  scored as its own row ("input"), and for inpainting a classical harmonic
  fill is scored too, so a model is always seen next to doing nothing and
  doing the obvious.
* :func:`speed` times the model alone (warm-up, device synchronisation,
  median and p90 over repeats) or a folder end to end, I/O included.
* :func:`invertibility` measures how exactly ``inverse(forward(y))`` returns
  ``y`` on real images at a chosen dtype.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from . import degradations as dg
from .environment import device_name, versions
from .errors import ImageError, IraeError
from .imageio import read_image
from .files import atomic_write_bytes, discover
from .classical import EXTRA, NAMES as CLASSICAL_NAMES, for_task
from .inference import Restorer, pick_device, pick_dtype, strict_fp32
from .model.folded import FoldedIRAE
from .metrics import compute_all, mean_ignoring_inf, metric_keys
from .model import create_model, parameter_count
from .tasks import get_task

QUALITY_SCHEMA = "irae.benchmark.quality/1"
SPEED_SCHEMA = "irae.benchmark.speed/1"
INVERTIBILITY_SCHEMA = "irae.benchmark.invertibility/1"

INPUT_ROW = "input"
RESERVED_NAMES = (INPUT_ROW, *CLASSICAL_NAMES, "degraded", "clean")


METRIC_CONVENTIONS = (
    "BasicSR/KAIR paper preset: outputs clamped and rounded to uint8 levels (u8), float64 math, "
    "border 0, mean of per-image values (inf = exact image, left out of the mean and counted in n_inf); "
    "rgb = all channels, y601 = MATLAB rgb2ycbcr BT.601 luma; SSIM = Gaussian 11x11 sigma 1.5, valid "
    "region, per channel then averaged; psnrb = PSNR-B (Yim & Bovik) on Y; psnr_hole = PSNR over "
    "missing pixels only"
)

# Relative round-trip error above which the invertibility self-test fails, per dtype.
# What "invertible" promises per dtype.  fp32: the 8-bit input comes back exactly, i.e. every
# pixel of inverse(forward(y)) lies within half a level of y (what survives 8-bit storage is
# all a user can lose; a relative bar is stricter than that and costs quality to meet).
# fp64: the mathematics is exact (relative error).  bf16: a sanity bound only.
INVERT_TOLERANCE = {"fp64": 1e-9, "fp32": 0.5, "bf16": 5e-2}
INVERT_CRITERION = {"fp64": "max relative error", "fp32": "max error in 8-bit levels", "bf16": "max relative error"}
INVERT_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- shared helpers

def _json_value(v):
    """JSON has no inf/nan: store them as null (counts of exact images are kept separately)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def to_json(result: dict) -> str:
    return json.dumps(_json_value(result), indent=2, allow_nan=False) + "\n"


def write_json(result: dict, path: str | Path, *, overwrite: bool = False) -> None:
    atomic_write_bytes(path, to_json(result).encode(), overwrite=overwrite)


def check_outputs(paths: list[str | Path | None], overwrite: bool) -> None:
    """Refuse before any work is done if a report file would replace one the user has."""
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_dir():
            raise IraeError(f"{p}: is a folder; give a file name for the report")
        if p.exists() and not overwrite:
            raise IraeError(f"{p}: already exists; refusing to overwrite (use --overwrite or another name)")


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    weights: str | None
    sha256: str | None
    arch: str
    task: str | None = None
    task_params: dict = field(default_factory=dict)

    def entry(self) -> dict:
        return {"weights": self.weights, "sha256": self.sha256, "arch": self.arch,
                "params": parameter_count(self.model)}


def load_model(weights: str, *, name: str | None = None, task: str | None = None) -> LoadedModel:
    from .weights import load_weights

    lw = load_weights(weights, device="cpu", expect_task=task)
    return LoadedModel(name=name or lw.name, model=lw.model, weights=str(lw.path), sha256=lw.sha256,
                       arch=lw.model.config.arch, task=lw.task, task_params=lw.task_params)


def _preset_model(arch: str, init_images: torch.Tensor | None = None) -> LoadedModel:
    """An untrained preset, its ActNorms initialised on ``init_images`` (for smoke tests and timing)."""
    try:
        model = create_model(arch)
    except ValueError as e:
        raise IraeError(str(e)) from None
    if not model.is_initialized:
        x = init_images if init_images is not None else torch.rand(
            2, model.config.channels, 64, 64, generator=torch.Generator().manual_seed(0))
        model.initialize(x, x)
    return LoadedModel(name=arch, model=model.eval(), weights=None, sha256=None, arch=arch)


def parse_compare(items: list[str]) -> list[tuple[str, str]]:
    """['cnn=B.safetensors', ...] -> [('cnn', 'B.safetensors'), ...]."""
    out = []
    for item in items:
        name, sep, weights = item.partition("=")
        if not sep or not name.strip() or not weights.strip():
            raise IraeError(f"--compare {item!r}: use NAME=WEIGHTS, e.g. --compare cnn=weights/cnn.safetensors")
        out.append((name.strip(), weights.strip()))
    return out


# --------------------------------------------------------------------------- quality: degradations

def levels_for(task: str, *, sigmas=None, qualities=None, masks=None, hole_range=None,
               noise_protocol: str | None = None) -> list:
    """The benchmark grid as ``irae degrade`` levels (same names, parameters and validation)."""
    from .degradations import build_levels

    return build_levels(task, sigma=[(float(s), float(s)) for s in sigmas] if sigmas else None,
                        noise_protocol=noise_protocol, quality=[int(q) for q in qualities] if qualities else None,
                        masks=list(masks) if masks else None,
                        hole_ratio=tuple(hole_range) if hole_range is not None else None)


def degrade_image(clean: torch.Tensor, level, seed: int, rel: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(degraded, mask or None) of one clean (C,H,W) image, equal to what ``irae degrade`` writes.

    Same generator (``derive_seed(seed, rel, level.name)``), same draws in the
    same order as ``irae degrade``; only the file round trip is skipped, which
    changes no pixel (8-bit PNG of an already 8-bit image, float32 .npy, JPEG
    decoded by the same Pillow).  Inpainting holes are left as they are: the
    task fills them before the model sees them.  ``clean`` must already be
    8-bit (``quantize_u8``), as ``irae degrade`` makes it.
    """
    g = torch.Generator().manual_seed(dg.derive_seed(seed, rel, level.name))
    try:
        return level.stored(clean, g)
    except ImageError as e:
        raise ImageError(f"{rel}: {e}") from None


@dataclass
class Unit:
    """One clean image and its degraded versions (same size), restored together as one batch."""

    image: str
    clean: torch.Tensor
    levels: list[str]
    degraded: torch.Tensor  # (L, C, H, W)
    masks: torch.Tensor | None  # (L, 1, H, W) bool, True = missing
    params: list[dict] = field(default_factory=list)  # per level: what was drawn (sigma, quality, ...)


def folder_units(root: Path, task: str, levels: list, seed: int, failures: list[dict]):
    # Recursive like 'irae degrade', so relative paths -- and therefore seeds -- agree.
    sources = discover(root, recursive=True)
    if not sources:
        raise IraeError(f"{root}: no images found (looked for png, jpg, webp, tiff, bmp)")
    for src in sources:
        rel = src.rel.as_posix()
        try:
            clean, _ = read_image(src.path)
            clean = dg.quantize_u8(clean)
            pairs = [degrade_image(clean, lv, seed, rel) for lv in levels]
        except ImageError as e:
            failures.append({"image": rel, "error": str(e)})
            continue
        masks = torch.stack([m for _, m in pairs]) if task == "inpaint" else None
        yield Unit(rel, clean, [lv.name for lv in levels], torch.stack([d for d, _ in pairs]), masks,
                   [lv.params for lv in levels])


def _read_npy(path: Path) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot read float image ({e})") from None
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ImageError(f"{path}: expected a (C, H, W) float array with C = 1 or 3, got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32))


def _read_mask(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot read mask ({e}); masks are 8-bit images, 255 = missing") from None
    return torch.from_numpy(arr > 127)[None]


def manifest_units(path: Path, task: str, failures: list[dict], settings: dict):
    """Units from an ``irae degrade`` set; every file is checked against its sha256 first."""
    from .testset import read_manifest

    entries = read_manifest(path, verify=True)
    if not entries:
        raise IraeError(f"{path}: the manifest lists no images")
    tasks = sorted({e["task"] for e in entries})
    if tasks != [task]:
        raise IraeError(f"{path}: manifest is for task {', '.join(tasks)}, not {task!r}; "
                        f"pass --task {tasks[0]}" if len(tasks) == 1 else
                        f"{path}: manifest mixes tasks {', '.join(tasks)}; benchmark one task at a time")
    base = (path if path.is_dir() else path.parent)
    levels: dict[str, dict] = {}
    seeds = set()
    for e in entries:
        # A level's fixed parameters; per-image draws (blind sigma, measured hole ratio) stay per image.
        drawn = {"hole_ratio"} | ({"sigma"} if "sigma_range" in e["params"] else set())
        levels.setdefault(e["level"], {k: v for k, v in e["params"].items() if k not in drawn})
        seeds.add(e.get("base_seed"))
        clean_path, deg_path = base / e["clean"], base / e["degraded"]
        try:
            clean, _ = read_image(clean_path)
            degraded = _read_npy(deg_path) if deg_path.suffix == ".npy" else read_image(deg_path)[0]
            mask = _read_mask(base / e["mask"]) if e.get("mask") else None
            if degraded.shape != clean.shape or (mask is not None and mask.shape[-2:] != clean.shape[-2:]):
                raise ImageError(f"{deg_path}: size {tuple(degraded.shape)} does not match its clean image "
                                 f"{tuple(clean.shape)}; the set is inconsistent, make it again")
        except ImageError as err:
            failures.append({"image": e["source"], "error": str(err)})
            continue
        yield Unit(e["source"], clean, [e["level"]], degraded[None], None if mask is None else mask[None],
                   [e["params"]])
    settings["levels"] = levels
    settings["seed"] = seeds.pop() if len(seeds) == 1 else sorted(seeds, key=str)


# --------------------------------------------------------------------------- quality

@dataclass
class _SheetPick:
    row: object  # sheet.SheetRow
    level: str


def _error_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).mean(dim=0)


def quality(source: str | Path, *, task: str, weights: str | None = None, compare: list[tuple[str, str]] = (),
            sigmas=None, qualities=None, masks=None, hole_range: tuple[float, float] | None = None,
            noise_protocol: str | None = None, seed: int = 0, device: str = "auto", dtype: str = "auto",
            tile: int | str = "auto", batch_size: int = 4, sheet: str | Path | None = None,
            sheet_crop: int = 128, sheet_images: int = 8, sheet_crop_mode: str = "worst",
            overwrite: bool = False, progress=None, classical: str = "all") -> dict:
    """Score the degraded input, the task's classical methods, and each model on one image set.

    ``source`` is a clean image folder or file, degraded here exactly as
    ``irae degrade`` would with the same ``seed`` and options (defaults: sigma
    15,25,50 clip; quality 10,20,30,40 at 4:2:0; masks box,strokes with hole
    ratio 0.05-0.4) -- or an ``irae degrade`` set (its ``manifest.jsonl`` or
    the folder holding it), whose files are used as they are.  ``weights``
    (name or path; default: the task's shipped default) and ``compare``
    (name, weights) pairs are the models.  Returns the
    ``irae.benchmark.quality/1`` dict; writes ``sheet`` (PNG) when given.
    Unreadable images are listed under ``failures`` and skipped.  ``classical``
    (all, none or names) picks the classical rows (``irae_cli.classical``);
    those whose package is missing are listed in ``settings["classical"]``.
    """
    source = Path(source)
    t = get_task(task)
    if not source.exists():
        raise IraeError(f"{source}: no such file or folder")
    manifest = (source.is_file() and source.suffix.lower() == ".jsonl") or (
        source.is_dir() and (source / "manifest.jsonl").is_file())
    settings: dict = {"task": task, "source": str(source), "source_kind": "manifest" if manifest else "folder",
                      "seed": seed, "levels": {}, "metric_conventions": METRIC_CONVENTIONS}
    if manifest:
        given = [n for n, v in (("--sigma", sigmas), ("--quality", qualities), ("--mask", masks),
                                ("--hole-ratio", hole_range), ("--noise-protocol", noise_protocol)) if v]
        if given:
            raise IraeError(f"{source} is an 'irae degrade' set, which fixes the degradations; "
                            f"drop {', '.join(given)} or benchmark the clean folder instead")
        levels: list = []
    else:
        levels = levels_for(task, sigmas=sigmas, qualities=qualities, masks=masks, hole_range=hole_range,
                            noise_protocol=noise_protocol)
        settings["levels"] = {lv.name: lv.params for lv in levels}

    # Models: the degraded input itself, a classical fill for inpainting, then the networks.
    if weights is None and not compare:
        from .weights import default_weights_for

        weights = default_weights_for(task)
        if weights is None:
            raise IraeError(f"no shipped weights for task {task!r} yet; pass --weights FILE (from 'irae train')")
    specs = ([(None, weights)] if weights is not None else []) + list(compare)
    loaded: list[LoadedModel] = []
    for name, w in specs:
        lm = load_model(w, name=name, task=task)
        if lm.name in RESERVED_NAMES or any(lm.name == o.name for o in loaded):
            raise IraeError(f"model name {lm.name!r} is reserved or used twice; name it with --compare NAME=WEIGHTS")
        loaded.append(lm)
    # Task parameters as 'irae restore' merges them: the task's defaults, then what the weights file says.
    restorers = [(lm.name, Restorer(lm.model, t, task_params=t.params_for_weights(lm.task_params),
                                    device=device, dtype=dtype, tile=tile, batch_size=batch_size))
                 for lm in loaded]
    dev = restorers[0][1].device if restorers else pick_device(device)
    settings.update({"device": str(dev), "dtype": str(restorers[0][1].dtype).removeprefix("torch.") if restorers
                     else "float32", "tile": tile, "batch_size": batch_size, "n_images": 0, "sheet": None})

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
    names = list(models)
    keys = metric_keys(task)

    failures: list[dict] = []
    units = manifest_units(source, task, failures, settings) if manifest else folder_units(
        source, task, levels, seed, failures)
    per: dict[tuple[str, str], list[dict]] = {}
    level_order: list[str] = []
    picks: list[_SheetPick] = []
    picked_per_level: dict[str, int] = {}
    from .sheet import SheetRow, crop_box

    fill_value = float(t.default_task_params().get("fill", 0.5)) if t.needs_mask else 0.0
    for unit in units:
        if min(unit.clean.shape[-2:]) < 11:
            failures.append({"image": unit.image, "error": f"{unit.image}: smaller than the 11x11 SSIM window; "
                                                           f"not scored"})
            continue
        outputs: dict[str, torch.Tensor] = {}
        if t.needs_mask:
            outputs[INPUT_ROW] = dg.apply_holes(unit.degraded, unit.masks, fill_value)
        else:
            outputs[INPUT_ROW] = unit.degraded
        for m in methods:
            outputs[m.name] = torch.stack([
                m.run(unit.degraded[i], unit.params[i], unit.masks[i] if unit.masks is not None else None)
                for i in range(len(unit.levels))])
        try:
            for name, restorer in restorers:
                outputs[name] = restorer(unit.degraded, unit.masks)
        except IraeError as e:
            failures.append({"image": unit.image, "error": f"{unit.image}: {e}"})
            continue
        for i, level in enumerate(unit.levels):
            if level not in level_order:
                level_order.append(level)
            mask = unit.masks[i] if unit.masks is not None else None
            for name in names:
                m = compute_all(outputs[name][i], unit.clean, task=task, mask=mask)
                row = {"image": unit.image, **m}
                if mask is not None:
                    row["hole_ratio"] = float(mask.float().mean().item())
                per.setdefault((name, level), []).append(row)
            if sheet is not None and picked_per_level.get(level, 0) < sheet_images:
                picked_per_level[level] = picked_per_level.get(level, 0) + 1
                lead = loaded[0].name if loaded else INPUT_ROW
                box = crop_box(_error_map(outputs[lead][i], unit.clean), sheet_crop, sheet_crop_mode)
                main = "psnr_hole_rgb_u8" if t.needs_mask else "psnr_rgb_u8"
                labels = {n: _psnr_label(per[(n, level)][-1][main], t.needs_mask) for n in names}
                labels["degraded"] = labels.pop(INPUT_ROW)
                crop = sheet_crop
                outs = {n: _cut(outputs[n][i], box, crop) for n in names if n != INPUT_ROW}
                picks.append(_SheetPick(SheetRow(
                    title=unit.image, level=level, degraded=_cut(outputs[INPUT_ROW][i], box, crop),
                    clean=_cut(unit.clean, box, crop), outputs=outs, labels=labels, box=(0, 0)), level))
        if progress is not None:
            progress(unit.image)

    if not per:
        first = failures[0]["error"] if failures else "no images"
        raise IraeError(f"no image could be benchmarked ({first})")

    results = []
    for name in names:
        for level in level_order:
            rows = per.get((name, level), [])
            means, n_inf = {}, {}
            for k in keys:
                fm = mean_ignoring_inf(r[k] for r in rows)
                means[k] = math.inf if fm.n_finite == 0 and fm.n_inf else fm.mean
                n_inf[k] = fm.n_inf
            if t.needs_mask:
                means["hole_ratio"] = statistics.fmean(r["hole_ratio"] for r in rows)
            results.append({"model": name, "level": level, "n_images": len(rows), "metrics": means,
                            "n_inf": n_inf, "per_image": rows})
    settings["n_images"] = len({r["image"] for rows in per.values() for r in rows})
    result = {"schema": QUALITY_SCHEMA, "settings": settings, "versions": versions(dev), "models": models,
              "results": results, "failures": failures}
    if sheet is not None:
        from .sheet import render_sheet

        order = {lv: i for i, lv in enumerate(level_order)}
        rows = [p.row for p in sorted(picks, key=lambda p: order[p.level])]
        img = render_sheet(rows, [n for n in names if n != INPUT_ROW], crop=sheet_crop)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(sheet, buf.getvalue(), overwrite=overwrite)
        result["settings"]["sheet"] = {"path": str(sheet), "crop": sheet_crop, "crop_mode": sheet_crop_mode,
                                       "rows": len(rows), "size": list(img.size)}
    return result


def _cut(x: torch.Tensor, box: tuple[int, int], crop: int) -> torch.Tensor:
    top, left = box
    return x[..., top:top + crop, left:left + crop].clone()


def _psnr_label(v: float, hole: bool) -> str:
    text = "exact" if v == math.inf else f"{v:.2f} dB"
    return f"hole {text}" if hole else f"PSNR {text}"


# --------------------------------------------------------------------------- speed

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss * (1 if sys.platform == "darwin" else 1024)), "process peak RSS"
    except (ImportError, OSError):
        return None, "unavailable"


def macs_per_pixel(model: torch.nn.Module, channels: int, multiple: int) -> float:
    """Multiply-accumulates per output pixel of one restore, counted by torch's FLOP counter.

    The counter sees every convolution and matrix product that runs, module or
    functional -- for IRAE that is the encoder's forward *and* the decoder's
    inverse, 1x1 flow convolutions included; element-wise work is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    side = max(64, multiple)
    side += (-side) % multiple
    x = torch.rand(1, channels, side, side, generator=torch.Generator().manual_seed(0))
    model = model.to("cpu").float()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / (side * side)


def _time_calls(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _summary(mode: str, times: list[float], images: int, megapixels: float, device: torch.device, **extra) -> dict:
    med = statistics.median(times)
    peak, source = _peak_memory(device)
    return {"mode": mode, "images": images, "megapixels": megapixels, "repeats": len(times),
            "median_s": med, "p90_s": _percentile(times, 90), "mp_per_s": megapixels / med if med > 0 else None,
            "images_per_s": images / med if med > 0 else None, "peak_memory_bytes": peak,
            "peak_memory_source": source, "times_s": times, **extra}


def speed(*, arch: str | None = None, weights: str | None = None, size: int = 1024, batch_size: int = 4,
          dtype: str = "auto", device: str = "auto", compile: bool = False, repeats: int | None = None,
          warmup: int = 2, folder: str | Path | None = None, naive: bool = False,
          channels_last: bool = False, baseline: bool = False) -> dict:
    """Time one restore model; returns the ``irae.benchmark.speed/1`` dict.

    Without ``folder``: ``batch_size`` random images of ``size`` x ``size``
    through the model alone (``repeats`` default 10). With ``folder``: the
    whole restore path, files in to files out in a temporary folder (default 1
    repeat), and with ``naive`` also a plain per-image loop on the same files.
    """
    if arch is not None and weights is not None:
        raise IraeError("give --arch or --weights, not both")
    if size < 16 or batch_size < 1 or warmup < 0 or (repeats is not None and repeats < 1):
        raise IraeError("--size must be >= 16, --batch-size and --repeats >= 1, --warmup >= 0")
    if naive and folder is None:
        raise IraeError("--naive compares against the end-to-end run; give --folder DIR as well")
    lm = load_model(weights) if weights is not None else _preset_model(arch or "paper-denoise")
    task = lm.task or "denoise"
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if dev.type == "cuda" and dt == torch.float32:
        strict_fp32()  # time the IEEE fp32 convolutions that restore runs, not TF32
    model = lm.model
    params = parameter_count(model)
    multiple = int(getattr(model, "size_multiple", 1))
    mac = macs_per_pixel(model, model.config.channels, multiple)
    settings = {"arch": lm.arch, "weights": lm.weights, "task": task, "size": size, "batch_size": batch_size,
                "dtype": str(dt).replace("torch.", ""), "device": str(dev), "compile": compile,
                "channels_last": channels_last, "warmup": warmup, "folder": None if folder is None else str(folder),
                "naive": naive, "cpu_threads": torch.get_num_threads()}
    notes: list[str] = []
    results: list[dict] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    if folder is None:
        settings["repeats"] = repeats = repeats or 10
        side = size + (-size) % multiple
        if side != size:
            notes.append(f"size {size} rounded up to {side}, a multiple of the model's size multiple {multiple}")
        settings["size"] = side
        runs = [("model", dtype, compile, True)]
        if baseline:
            runs.insert(0, ("baseline: eager fp32, unfolded", "fp32", False, False))
        for mode, run_dtype, run_compile, folded in runs:
            times, n, resolved, compiled = _time_model(lm, task, dev, run_dtype, run_compile, folded, channels_last,
                                                       side, batch_size, warmup, repeats, notes)
            results.append(_summary(mode, times, n, n * side * side / 1e6, dev, batch_size=n,
                                    dtype=resolved, compile=compiled, folded=folded))
        settings["compile"] = results[-1]["compile"]
        settings["dtype"] = results[-1]["dtype"]
    else:
        settings["repeats"] = repeats = repeats or 1
        results.extend(_speed_folder(lm, Path(folder), task, dev, dtype, batch_size, warmup, repeats, naive, notes))
    out_model = {**lm.entry(), "params": params, "mac_per_pixel": mac, "size_multiple": multiple}
    return {"schema": SPEED_SCHEMA, "settings": settings, "versions": versions(dev), "model": out_model,
            "results": results, "notes": notes}


def _time_model(lm: LoadedModel, task: str, dev: torch.device, dtype: str, compile: bool, folded: bool,
                channels_last: bool, side: int, batch_size: int, warmup: int, repeats: int,
                notes: list[str]) -> tuple[list[float], int, str, bool]:
    """Times of the restore path's model call (as ``Restorer`` builds it) on random images on ``dev``.

    Returns the times, the batch size that fitted, the dtype the path resolved to (a folded IRAE
    runs only its coupling nets in it) and whether the timed calls were compiled.
    """
    restorer = Restorer(lm.model, get_task(task), device=dev, dtype=dtype, tile=0, folded=folded)
    resolved = str(restorer.dtype).removeprefix("torch.")
    if isinstance(restorer.runner, FoldedIRAE) and restorer.dtype != torch.float32:
        resolved += " (coupling nets)"
    run_model = restorer.runner
    if channels_last:
        run_model = run_model.to(memory_format=torch.channels_last)
    if compile:
        run_model, note = _compile(run_model)
        if note:
            notes.append(note)
    channels = lm.model.config.channels
    n = batch_size
    while True:
        x = torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(0)).to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def call():
            with torch.inference_mode(), restorer._autocast():
                run_model(x)
        oom = False
        try:
            breaks = _graph_breaks()
            times = _time_calls(call, dev, warmup, repeats)
            breaks = _graph_breaks() - breaks
            if compile and breaks:
                notes.append(f"torch.compile was partial: {breaks} graph break(s); parts of the model ran eager")
            return times, n, resolved, compile
        except torch.OutOfMemoryError:
            if n == 1:
                raise IraeError(f"out of device memory at batch 1 and {side}px; lower --size") from None
            oom = True  # freed below, once the traceback no longer holds the failed call's tensors
        except Exception as e:  # compile failures surface at the first call
            if not compile:
                raise
            notes.append(f"torch.compile failed at run time ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "timed eager instead")
            compile, run_model = False, restorer._eager
        if oom:
            n //= 2
            notes.append(f"out of memory: batch halved to {n}")
            del x
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def _graph_breaks() -> int:
    """Graph breaks dynamo has counted in this process (0 where the counter is unavailable)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return sum(counters["graph_break"].values())


def _compile(model):
    if not hasattr(torch, "compile"):
        return model, "torch.compile is not available in this torch; timed eager"
    try:
        return torch.compile(model, dynamic=False), None
    except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager, and is reported
        return model, f"torch.compile failed ({type(e).__name__}: {e}); timed eager"


def _speed_folder(lm: LoadedModel, folder: Path, task: str, dev: torch.device, dtype: str, batch_size: int,
                  warmup: int, repeats: int, naive: bool, notes: list[str]) -> list[dict]:
    """Time ``irae restore``'s folder pipeline (files in, files out), and optionally a naive loop."""
    from PIL import Image

    from .pipeline import RestoreOptions, restore
    from .weights import save_weights

    if get_task(task).needs_mask:
        raise IraeError("end-to-end timing needs masks for inpainting weights; time a denoise or jpeg model")
    if not folder.is_dir():
        raise IraeError(f"{folder}: not a folder; --folder takes a folder of images")
    sources = discover(folder, recursive=True)  # as restore walks it
    if not sources:
        raise IraeError(f"{folder}: no images found")
    megapixels = 0.0
    for s in sources:
        try:
            with Image.open(s.path) as img:
                megapixels += img.width * img.height / 1e6
        except OSError:
            raise IraeError(f"{s.path}: cannot read this image; remove it from the timing folder") from None
    out = []
    with tempfile.TemporaryDirectory(prefix="irae-bench-") as tmp:
        tmp = Path(tmp)
        weights = lm.weights
        if weights is None:  # an untrained preset goes through the same file path as real weights
            weights = str(tmp / f"{lm.arch}.safetensors")
            save_weights(lm.model, weights, task=task)
        # Like for like: both runs write PNG at restore's default level, at the same precision.
        opts = RestoreOptions(task=task, weights=weights, device=str(dev), dtype=dtype, batch_size=batch_size,
                              format="png")
        # As restore resolves it: an IRAE flow runs only its coupling nets in bf16/fp16.
        from .model.folded import FoldedIRAE, fold

        coupling_only = isinstance(fold(lm.model), FoldedIRAE)
        dt = pick_dtype(dtype, dev, coupling_only=coupling_only)
        scope = None if dt == torch.float32 else ("coupling nets" if coupling_only else "whole model")
        precision = {"dtype": str(dt).replace("torch.", ""), "low_precision_scope": scope,
                     "conv_tf32": _conv_tf32(dev), "output": f"PNG level {opts.png_level}"}
        # Warm-up on the first file: CUDA context, kernels and allocator are process-wide, so later runs start warm.
        for w in range(warmup):
            restore(sources[0].path, tmp / f"warm-{w}", opts, quiet=True)
        times = []
        for r in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            summary = restore(folder, tmp / f"e2e-{r}", opts, quiet=True)
            _sync(dev)
            times.append(time.perf_counter() - t0)
            if summary.failed:
                notes.append(f"end-to-end run {r + 1}: {summary.failed} file(s) failed")
        out.append(_summary("end-to-end", times, len(sources), megapixels, dev, **precision,
                            pipeline=f"irae restore pipeline (PNG level {opts.png_level}, weights load included)"))
        if naive:
            model = lm.model.to(dev).float().eval()
            times = []
            for r in range(repeats):
                dest = tmp / f"naive-{r}"
                dest.mkdir()
                _sync(dev)
                t0 = time.perf_counter()
                _naive_loop(sources, dest, model, dev, dt, opts.png_level, coupling_only)
                _sync(dev)
                times.append(time.perf_counter() - t0)
            out.append(_summary("naive", times, len(sources), megapixels, dev, **precision,
                                pipeline=f"Pillow read, one image at a time, eager, {precision['dtype']}, "
                                         f"Pillow PNG write (level {opts.png_level})"))
    return out


def _conv_tf32(dev: torch.device) -> bool | None:
    """Whether fp32 convolutions run as TF32 on this device (None off CUDA)."""
    if dev.type != "cuda":
        return None
    try:
        return torch.backends.cudnn.conv.fp32_precision == "tf32"
    except AttributeError:  # torch before the fp32_precision API
        return bool(torch.backends.cudnn.allow_tf32)


def _naive_loop(sources, dest: Path, model: torch.nn.Module, dev: torch.device, dt: torch.dtype = torch.float32,
                png_level: int = 1, coupling_only: bool = False) -> None:
    """The plain loop: Pillow read, the unfolded model on one image, Pillow PNG write; at ``dt`` with
    restore's scope (an IRAE flow's coupling nets only, else the whole model)."""
    from PIL import Image

    from .train import autocast_coupling_nets

    hooks = autocast_coupling_nets(model, dev.type, dt) if dt != torch.float32 and coupling_only else []
    whole = dt != torch.float32 and not coupling_only
    try:
        for s in sources:
            with Image.open(s.path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(dev)
            autocast = torch.autocast(device_type=dev.type, dtype=dt) if whole else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                y = model(x).float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
            Image.fromarray(np.round(y * 255).astype(np.uint8), "RGB").save(dest / (s.path.stem + ".png"),
                                                                           compress_level=png_level)
    finally:
        for h in hooks:
            h.remove()


# --------------------------------------------------------------------------- invertibility

def fit_to_multiple(x: torch.Tensor, multiple: int, size: int | None = None) -> torch.Tensor:
    """(C,H,W) -> a (C,h,w) image whose sides are multiples of ``multiple``.

    IRAE is a bijection on padded sizes only: ``forward`` reflect-pads to the
    multiple and crops back, so ``inverse`` would re-pad the crop with
    different values and the round trip could not be exact at the border.
    Centre-cropping to the multiple keeps every measured pixel a real one.
    With ``size`` the image is instead grown (mirrored copies of itself, so
    content stays photographic) and centre-cropped to ``size`` x ``size``,
    rounded up to the multiple -- e.g. 1024 to measure at one megapixel.
    """
    if size is not None:
        side = size + (-size) % multiple
        _, h, w = x.shape
        ph, pw = max(0, side - h), max(0, side - w)
        if ph or pw:
            arr = np.pad(x.numpy(), ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
            x = torch.from_numpy(arr)
        th = tw = side
    else:
        th, tw = x.shape[1] - x.shape[1] % multiple, x.shape[2] - x.shape[2] % multiple
        if th == 0 or tw == 0:
            raise ImageError(f"image {x.shape[2]}x{x.shape[1]} is smaller than the model's size multiple {multiple}")
    top, left = (x.shape[1] - th) // 2, (x.shape[2] - tw) // 2
    return x[:, top:top + th, left:left + tw].contiguous()


def _default_image_folder() -> Path | None:
    repo = Path(__file__).resolve().parent.parent
    for cand in (repo / "examples", repo / "tests" / "data"):
        if cand.is_dir() and any(discover(cand)):
            return cand
    return None


def invertibility(*, weights: str | None = None, arch: str | None = None, images: str | Path | None = None,
                  dtype: str = "fp32", device: str = "auto", size: int | None = None) -> dict:
    """Round-trip error of ``inverse(forward(y))`` on real images; the ``irae.benchmark.invertibility/1`` dict.

    Per image: relative error ``||inverse(forward(y)) - y|| / ||y||`` and the
    max abs error (0..1 scale), plus the condition numbers of every 1x1 flow
    convolution.  ``arch`` builds an untrained preset initialised on the
    images (a smoke test of the code, not of any weights).
    """
    if (weights is None) == (arch is None):
        raise IraeError("give --weights W (trained model) or --arch PRESET (untrained smoke test), one of them")
    if dtype not in INVERT_DTYPES:
        raise IraeError(f"--dtype {dtype!r}: use fp32, fp64 or bf16")
    folder = Path(images) if images is not None else _default_image_folder()
    if folder is None:
        raise IraeError("no image folder given and no examples/ folder found; pass a folder of photos")
    try:
        sources = discover(folder, recursive=True)
    except FileNotFoundError:
        raise IraeError(f"{folder}: no such file or folder") from None
    if not sources:
        raise IraeError(f"{folder}: no images found")
    failures: list[dict] = []
    loaded: list[tuple[str, torch.Tensor]] = []
    for s in sources:
        try:
            x, _ = read_image(s.path)
            loaded.append((s.rel.as_posix(), x))
        except ImageError as e:
            failures.append({"image": s.rel.as_posix(), "error": str(e)})
    if not loaded:
        raise IraeError(f"{folder}: no readable image ({failures[0]['error']})")

    if weights is not None:
        lm = load_model(weights)
    else:
        try:
            probe = create_model(arch)
        except ValueError as e:
            raise IraeError(str(e)) from None
        mult = int(getattr(probe, "size_multiple", 1))
        first = fit_to_multiple(loaded[0][1], mult)
        first = first.expand(probe.config.channels, -1, -1) if first.shape[0] == 1 else first
        lm = _preset_model(arch, first[None])
    model = lm.model
    if not getattr(model, "invertible", False):
        raise IraeError(f"{lm.weights or lm.arch}: a {lm.arch} model is not invertible; "
                        "the round-trip test applies to IRAE models only")
    dev = pick_device(device)
    if dev.type == "cuda":
        strict_fp32()  # a TF32 round trip would measure TF32, not the fp32 the weights promise
    if dtype == "bf16" and dev.type == "cpu":
        pass  # bf16 autocast works on CPU, just slowly; allowed so the figure can be had anywhere
    multiple = int(model.size_multiple)
    model = model.to(dev).eval()
    if dtype == "fp64":
        model = model.double()
    results = []
    for rel, x in loaded:
        try:
            y = fit_to_multiple(x, multiple, size)
        except ImageError as e:
            failures.append({"image": rel, "error": f"{rel}: {e}"})
            continue
        if y.shape[0] == 1 and model.config.channels == 3:
            y = y.expand(3, -1, -1)
        y = y[None].to(dev, INVERT_DTYPES[dtype] if dtype == "fp64" else torch.float32)
        with torch.inference_mode():
            if dtype == "bf16":
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                    back = model.inverse(model.forward(y))
            else:
                back = model.inverse(model.forward(y))
        diff = back.double() - y.double()
        levels = diff.abs() * 255
        results.append({"image": rel, "shape": list(y.shape[1:]),
                        "rel_error": (diff.norm() / y.double().norm()).item(),
                        "max_abs_error": diff.abs().max().item(),
                        "max_error_levels": levels.max().item(),
                        "exact_u8_fraction": (levels < 0.5).double().mean().item()})
    if not results:
        raise IraeError(f"no image could be measured ({failures[0]['error']})")
    conds = model.condition_numbers()
    worst = max(r["rel_error"] for r in results)
    worst_levels = max(r["max_error_levels"] for r in results)
    tol = INVERT_TOLERANCE[dtype]
    measured = worst_levels if dtype == "fp32" else worst
    settings = {"weights": lm.weights, "arch": lm.arch, "trained": weights is not None, "images": str(folder),
                "dtype": dtype, "device": str(dev), "size": size, "size_multiple": multiple,
                "fit": (f"mirror-extended and centre-cropped to {size}+ rounded up to a multiple of {multiple}"
                        if size else f"centre-cropped to a multiple of {multiple}"),
                "criterion": INVERT_CRITERION[dtype], "tolerance": tol}
    return {"schema": INVERTIBILITY_SCHEMA, "settings": settings, "versions": versions(dev),
            "model": lm.entry(),
            "condition_numbers": {"count": len(conds), "min": min(conds) if conds else None,
                                  "max": max(conds) if conds else None},
            "results": results,
            "summary": {"max_rel_error": worst, "max_abs_error": max(r["max_abs_error"] for r in results),
                        "max_error_levels": worst_levels,
                        "exact_u8_fraction": min(r["exact_u8_fraction"] for r in results),
                        "megapixels": max(r["shape"][1] * r["shape"][2] for r in results) / 1e6,
                        "passed": measured < tol if dtype == "fp32" else measured <= tol},
            "failures": failures}


# --------------------------------------------------------------------------- tables for the screen

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
    for col in ("mode", "images", "MP", "median s", "p90 s", "MP/s", "images/s", "peak memory"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in result["results"]:
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f} MiB"
        if r["peak_memory_bytes"] is not None and r["peak_memory_source"] != "cuda max_memory_allocated":
            mem += " (process)"
        mode = r["mode"]
        if "dtype" in r:
            mode += f" ({r['dtype']}{', compiled' if r.get('compile') else ''}{', folded' if r.get('folded') else ''})"
        table.add_row(mode, str(r["images"]), f"{r['megapixels']:.3g}", f"{r['median_s']:.4f}",
                      f"{r['p90_s']:.4f}", _fmt(r["mp_per_s"], 3), _fmt(r["images_per_s"], 2), mem)
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
