"""``irae benchmark invertibility``: how exactly ``inverse(forward(y))`` returns ``y`` on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import degradations as dg
from ..errors import ImageError, IraeError
from ..files import discover, no_images_message
from ..imageio import read_image
from ..inference import LowPrecision, device_and_dtype, restore_levels
from ..model.condition import stand_in_level
from ..model import create_model
from ..tasks import with_mask_channel
from .common import INVERTIBILITY_SCHEMA
from ..environment import versions
from .models import LoadedModel, load_model, preset_model

# What "invertible" promises per dtype.  fp32: the 8-bit input comes back exactly, i.e. every
# pixel of inverse(forward(y)) lies within half a level of y (what survives 8-bit storage is
# all a user can lose; a relative bar is stricter than that and costs quality to meet).
# fp64: the mathematics is exact (relative error).  bf16: a sanity bound only.
INVERT_TOLERANCE = {"fp64": 1e-9, "fp32": 0.5, "bf16": 5e-2}
INVERT_CRITERION = {"fp64": "max relative error", "fp32": "max error in 8-bit levels", "bf16": "max relative error"}
INVERT_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


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
    folder, loaded, failures = _read_images(images)
    lm = _invertible_model(weights, arch, loaded)
    # strict: a TF32 round trip would measure TF32, not the fp32 the weights promise
    dev, _ = device_and_dtype(device, "fp32", strict=True)
    # bf16 autocast works on the CPU too, just slowly; allowed so the figure can be had anywhere.
    multiple = int(lm.model.size_multiple)
    model = lm.model.to(dev).eval()
    if dtype == "fp64":
        model = model.double()
    results = []
    for rel, x in loaded:
        try:
            y = fit_to_multiple(x, multiple, size)
        except ImageError as e:
            failures.append({"image": rel, "error": f"{rel}: {e}"})
            continue
        results.append({"image": rel, **round_trip(model, as_model_input(y, model.config.channels, rel), dtype, dev)})
    if not results:
        raise IraeError(f"no image could be measured ({failures[0]['error']})")
    settings = {"weights": lm.weights, "arch": lm.arch, "trained": weights is not None, "images": str(folder),
                "dtype": dtype, "device": str(dev), "size": size, "size_multiple": multiple,
                "fit": (f"mirror-extended and centre-cropped to {size}+ rounded up to a multiple of {multiple}"
                        if size else f"centre-cropped to a multiple of {multiple}"),
                "criterion": INVERT_CRITERION[dtype], "tolerance": INVERT_TOLERANCE[dtype]}
    conds = model.condition_numbers()
    return {"schema": INVERTIBILITY_SCHEMA, "settings": settings, "versions": versions(dev),
            "model": lm.entry(),
            "condition_numbers": {"count": len(conds), "min": min(conds) if conds else None,
                                  "max": max(conds) if conds else None},
            "results": results, "summary": _summary(results, dtype), "failures": failures}


def _default_image_folder() -> Path | None:
    repo = Path(__file__).resolve().parent.parent.parent
    for cand in (repo / "examples", repo / "tests" / "data"):
        if cand.is_dir() and any(discover(cand)):
            return cand
    return None


def _read_images(images: str | Path | None) -> tuple[Path, list[tuple[str, torch.Tensor]], list[dict]]:
    """(folder, [(relative name, image)], failures) of the photos to measure on."""
    folder = Path(images) if images is not None else _default_image_folder()
    if folder is None:
        raise IraeError("no image folder given and no examples/ folder found; pass a folder of photos")
    try:
        sources = discover(folder, recursive=True)
    except FileNotFoundError:
        raise IraeError(f"{folder}: no such file or folder") from None
    if not sources:
        raise IraeError(no_images_message(folder))
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
    return folder, loaded, failures


def _invertible_model(weights: str | None, arch: str | None, loaded: list[tuple[str, torch.Tensor]]) -> LoadedModel:
    """The trained weights, or the preset initialised on the first image; refused unless it is invertible."""
    if weights is not None:
        lm = load_model(weights)
    else:
        try:
            probe = create_model(arch)
        except ValueError as e:
            raise IraeError(str(e)) from None
        mult = int(probe.size_multiple)
        first = fit_to_multiple(loaded[0][1], mult)
        lm = preset_model(arch, as_model_input(first, probe.config.channels, loaded[0][0])[None])
    if not lm.model.invertible:
        raise IraeError(f"{lm.weights or lm.arch}: a {lm.arch} model is not invertible; "
                        "the round-trip test applies to IRAE models only")
    return lm


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


def as_model_input(x: torch.Tensor, channels: int, rel: str) -> torch.Tensor:
    """A (C,H,W) image as the model's (channels,H,W) input: gray repeated to RGB; for a model that also sees
    an inpainting mask, a mask seeded by the image's name beside it (the mask comes back through the round trip
    like the pixels)."""
    if channels == 4:
        mask = dg.random_mask("box", x.shape[1], x.shape[2], dg.generator_for(0, rel, "mask-channel"))
        return with_mask_channel(x[None], mask[None])[0]
    return x.expand(3, -1, -1) if x.shape[0] == 1 and channels == 3 else x


def round_trip(model: torch.nn.Module, y: torch.Tensor, dtype: str, dev: torch.device) -> dict:
    """The errors of ``inverse(forward(y))`` for one fitted (C,H,W) model input, computed in float64.
    bf16 casts what restore and training cast (``LowPrecision``: the coupling nets), nothing more; a model
    conditioned on the noise level goes both ways at the image's estimated sigma (what restore tells it), one
    conditioned on the JPEG quality at a typical quality (``stand_in_level``)."""
    level = restore_levels(model.config, y[None], stand_in_level(model.config))
    level = None if level is None else level.to(dev)
    y = y[None].to(dev, INVERT_DTYPES[dtype] if dtype == "fp64" else torch.float32)
    precision = LowPrecision(model, dev, INVERT_DTYPES[dtype]).attach()
    try:
        with torch.inference_mode(), precision.autocast():
            back = model.inverse(model.forward(y, level), level)
    finally:
        precision.detach()
    diff = back.double() - y.double()
    levels = diff.abs() * 255
    return {"shape": list(y.shape[1:]),
            "rel_error": (diff.norm() / y.double().norm()).item(),
            "max_abs_error": diff.abs().max().item(),
            "max_error_levels": levels.max().item(),
            "exact_u8_fraction": (levels < 0.5).double().mean().item()}


def _summary(results: list[dict], dtype: str) -> dict:
    """The worst image's figures and the verdict: fp32 passes below half a level, the others at the tolerance."""
    worst = max(r["rel_error"] for r in results)
    worst_levels = max(r["max_error_levels"] for r in results)
    tol = INVERT_TOLERANCE[dtype]
    measured = worst_levels if dtype == "fp32" else worst
    return {"max_rel_error": worst, "max_abs_error": max(r["max_abs_error"] for r in results),
            "max_error_levels": worst_levels,
            "exact_u8_fraction": min(r["exact_u8_fraction"] for r in results),
            "megapixels": max(r["shape"][1] * r["shape"][2] for r in results) / 1e6,
            "passed": measured < tol if dtype == "fp32" else measured <= tol}

