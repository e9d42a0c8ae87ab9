"""What ``irae benchmark quality`` scores: clean images and their degraded versions, in units of one image.

A source is either a clean folder (or file), degraded here exactly as ``irae
degrade`` would with the same seed, or an ``irae degrade`` set read as it is.
Either way it yields :class:`Unit` objects, so the scoring never asks where
the pixels came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import degradations as dg
from ..errors import ImageError, IraeError
from ..files import discover, no_images_message
from ..imageio import read_image
from ..maskio import read_mask
from .common import METRIC_CONVENTIONS


@dataclass
class Unit:
    """One clean image and its degraded versions (same size), restored together as one batch."""

    image: str
    clean: torch.Tensor
    levels: list[str]
    degraded: torch.Tensor  # (L, C, H, W)
    masks: torch.Tensor | None  # (L, 1, H, W) bool, True = missing
    params: list[dict] = field(default_factory=list)  # per level: what was drawn (sigma, quality, ...)
    # per level: the JPEG quality restore would read from the file's tables (jpeg only; Task.passes_through)
    source_quality: list[int | None] = field(default_factory=list)


@dataclass
class ImageSet:
    """A resolved source: where the images are, and the levels it is degraded to (empty for a manifest)."""

    path: Path
    task: str
    seed: int
    levels: list
    manifest: bool

    def settings(self) -> dict:
        """The report's first settings; a manifest's levels and seed are filled in as its entries are read."""
        return {"task": self.task, "source": str(self.path), "source_kind": "manifest" if self.manifest else "folder",
                "seed": self.seed, "levels": {lv.name: lv.params for lv in self.levels},
                "metric_conventions": METRIC_CONVENTIONS}

    def units(self, failures: list[dict], settings: dict):
        if self.manifest:
            return manifest_units(self.path, self.task, failures, settings)
        return folder_units(self.path, self.task, self.levels, self.seed, failures)


def resolve_source(source: Path, task: str, *, seed: int, sigmas=None, qualities=None, masks=None,
                   hole_range=None, noise_protocol: str | None = None) -> ImageSet:
    """The image set ``source`` names; level options are refused for a set, whose files fix them."""
    if not source.exists():
        raise IraeError(f"{source}: no such file or folder")
    manifest = (source.is_file() and source.suffix.lower() == ".jsonl") or (
        source.is_dir() and (source / "manifest.jsonl").is_file())
    if not manifest:
        levels = levels_for(task, sigmas=sigmas, qualities=qualities, masks=masks, hole_range=hole_range,
                            noise_protocol=noise_protocol)
        return ImageSet(source, task, seed, levels, manifest=False)
    given = [n for n, v in (("--sigma", sigmas), ("--quality", qualities), ("--mask", masks),
                            ("--hole-ratio", hole_range), ("--noise-protocol", noise_protocol)) if v]
    if given:
        raise IraeError(f"{source} is an 'irae degrade' set, which fixes the degradations; "
                        f"drop {', '.join(given)} or benchmark the clean folder instead")
    return ImageSet(source, task, seed, [], manifest=True)


# --------------------------------------------------------------------------- a clean folder, degraded here

def levels_for(task: str, *, sigmas=None, qualities=None, masks=None, hole_range=None,
               noise_protocol: str | None = None) -> list:
    """The benchmark grid as ``irae degrade`` levels (same names, parameters and validation)."""
    return dg.build_levels(task, sigma=[(float(s), float(s)) for s in sigmas] if sigmas else None,
                        noise_protocol=noise_protocol, quality=[int(q) for q in qualities] if qualities else None,
                        masks=list(masks) if masks else None,
                        hole_ratio=tuple(hole_range) if hole_range is not None else None)


def degrade_image(clean: torch.Tensor, level, seed: int, rel: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(degraded, mask or None) of one clean 8-bit (C,H,W) image: what ``irae degrade`` would store."""
    try:
        return level.stored(clean, dg.generator_for(seed, rel, level.name))
    except ImageError as e:
        raise ImageError(f"{rel}: {e}") from None


def folder_units(root: Path, task: str, levels: list, seed: int, failures: list[dict]):
    # Recursive like 'irae degrade', so relative paths -- and therefore seeds -- agree.
    sources = discover(root, recursive=True)
    if not sources:
        raise IraeError(no_images_message(root))
    for src in sources:
        rel = src.rel.as_posix()
        try:
            clean, _ = read_image(src.path)
            clean = dg.quantize_u8(clean)
            if task == "jpeg":  # the pixels and the quality restore would read, from one encode per level
                files = [dg.decode_file(lv.jpeg_file(clean)) for lv in levels]
                pairs, quality = [(y, None) for y, _ in files], [q for _, q in files]
            else:
                pairs, quality = [degrade_image(clean, lv, seed, rel) for lv in levels], []
        except ImageError as e:
            failures.append({"image": rel, "error": str(e)})
            continue
        masks = torch.stack([m for _, m in pairs]) if task == "inpaint" else None
        yield Unit(rel, clean, [lv.name for lv in levels], torch.stack([d for d, _ in pairs]), masks,
                   [lv.params for lv in levels], quality)


# --------------------------------------------------------------------------- an 'irae degrade' set

def _read_npy(path: Path) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot read float image ({e})") from None
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ImageError(f"{path}: expected a (C, H, W) float array with C = 1 or 3, got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32))


def _read_entry(base: Path, e: dict) -> Unit:
    clean_path, deg_path = base / e["clean"], base / e["degraded"]
    clean, _ = read_image(clean_path)
    degraded = _read_npy(deg_path) if deg_path.suffix == ".npy" else read_image(deg_path)[0]
    mask = read_mask(base / e["mask"], tuple(clean.shape[-2:]), clean_path) if e.get("mask") else None
    if degraded.shape != clean.shape:
        raise ImageError(f"{deg_path}: size {tuple(degraded.shape)} does not match its clean image "
                         f"{tuple(clean.shape)}; the set is inconsistent, make it again")
    quality = None
    if deg_path.suffix.lower() in (".jpg", ".jpeg"):
        with Image.open(deg_path) as img:
            quality = dg.estimate_quality(img)
    return Unit(e["source"], clean, [e["level"]], degraded[None], None if mask is None else mask[None],
                [e["params"]], [quality])


def manifest_units(path: Path, task: str, failures: list[dict], settings: dict):
    """Units from an ``irae degrade`` set; every file is checked against its sha256 first."""
    from ..testset import read_manifest

    entries = read_manifest(path, verify=True)
    if not entries:
        raise IraeError(f"{path}: the manifest lists no images")
    tasks = sorted({e["task"] for e in entries})
    if tasks != [task]:
        raise IraeError(f"{path}: manifest is for task {', '.join(tasks)}, not {task!r}; "
                        f"pass --task {tasks[0]}" if len(tasks) == 1 else
                        f"{path}: manifest mixes tasks {', '.join(tasks)}; benchmark one task at a time, or a "
                        f"mixed set (irae degrade --task auto) with --task auto")
    base = (path if path.is_dir() else path.parent)
    levels: dict[str, dict] = {}
    seeds = set()
    for e in entries:
        # A level's fixed parameters; per-image draws (blind sigma, measured hole ratio) stay per image.
        drawn = {"hole_ratio"} | ({"sigma"} if "sigma_range" in e["params"] else set())
        levels.setdefault(e["level"], {k: v for k, v in e["params"].items() if k not in drawn})
        seeds.add(e.get("base_seed"))
        try:
            unit = _read_entry(base, e)
        except ImageError as err:
            failures.append({"image": e["source"], "error": str(err)})
            continue
        yield unit
    settings["levels"] = levels
    settings["seed"] = seeds.pop() if len(seeds) == 1 else sorted(seeds, key=str)
