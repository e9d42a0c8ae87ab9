"""Validation during training: held-out photos, degraded once at fixed levels, scored on the EMA weights."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..degrade import add_gaussian_noise, derive_seed, jpeg_compress, quantize_u8, random_mask
from ..errors import IraeError
from ..tasks import Task
from .data import to_rgb_u8

VAL_LEVELS = {"denoise": (15, 25, 50), "jpeg": (10, 20, 30, 40), "inpaint": ("box", "strokes")}


class Validator:
    """Held-out full-size images, degraded once with fixed seeds, scored with PSNR on uint8-rounded RGB.

    Seeds come from ``derive_seed(val_seed, relative path, level)``; ``val_seed``
    is independent of the training ``--seed`` so runs with different training
    seeds are validated on identical inputs.
    """

    def __init__(self, root: Path, task: Task, task_params: dict, *, crop: int, seed: int,
                 noise_protocol: str = "paper", subsampling: str = "4:2:0", echo=print) -> None:
        self.task, self.task_params = task, task_params
        self.seed, self.noise_protocol, self.subsampling = seed, noise_protocol, subsampling
        self.levels = VAL_LEVELS[task.name]
        self.items: list[dict] = []
        for rel, clean in _centre_crops(root, crop, echo):
            self.items.extend(self._degraded(rel, clean, level) for level in self.levels)
        if not self.items:
            raise IraeError(f"--val {root}: no readable images found")
        self.images = len({it["rel"] for it in self.items})
        self.pixels = sum(it["clean"].shape[-1] * it["clean"].shape[-2] for it in self.items)
        self.input_psnr = self._score([self.task.model_input(it["degraded"][None],
                                                             None if it["mask"] is None else it["mask"][None],
                                                             task_params)[0] for it in self.items])

    def _degraded(self, rel: str, clean: torch.Tensor, level) -> dict:
        g = torch.Generator().manual_seed(derive_seed(self.seed, rel, level))
        mask = None
        if self.task.name == "denoise":
            y = add_gaussian_noise(clean, float(level), g)
            if self.noise_protocol == "clip":
                y = quantize_u8(y)
        elif self.task.name == "jpeg":
            y = jpeg_compress(clean, int(level), self.subsampling)
        else:
            hole = self.task.train_defaults.get("hole_range", (0.05, 0.4))
            mask = random_mask(str(level), clean.shape[-2], clean.shape[-1], g, tuple(hole))
            y = clean
        return {"rel": rel, "level": level, "clean": clean, "degraded": y, "mask": mask}

    @staticmethod
    def level_name(task: str, level) -> str:
        return {"denoise": f"sigma{level}", "jpeg": f"q{level}"}.get(task, str(level))

    def _score(self, outputs: list[torch.Tensor]) -> dict:
        from ..metrics import psnr

        per: dict = {}
        for it, out in zip(self.items, outputs):
            name = self.level_name(self.task.name, it["level"])
            entry = per.setdefault(name, {"psnr_rgb_u8": [], "psnr_hole_rgb_u8": []})
            entry["psnr_rgb_u8"].append(psnr(out, it["clean"]))
            if it["mask"] is not None:
                entry["psnr_hole_rgb_u8"].append(psnr(out, it["clean"], mask=it["mask"]))
        return {name: {key: _mean_psnr(values) for key, values in entry.items() if values}
                for name, entry in per.items()}

    def __call__(self, restorer) -> dict:
        outputs = []
        for it in self.items:
            mask = None if it["mask"] is None else it["mask"][None]
            outputs.append(restorer(it["degraded"][None], mask)[0])
        scores = self._score(outputs)
        for name, entry in scores.items():
            for key, value in self.input_psnr[name].items():
                entry[f"input_{key}"] = value
        return scores


class TrainingValidation:
    """Validation of the weights being trained (rank 0 only): a separate eval model that is loaded with
    the weights (the EMA's) before each validation, and therefore not folded."""

    def __init__(self, root: Path, task: Task, task_params: dict, *, crop: int, seed: int, config,
                 device: torch.device, echo) -> None:
        from ..inference import Restorer
        from ..model import create_model

        self.validator = Validator(root, task, task_params, crop=crop, seed=seed,
                                   noise_protocol=config.noise_protocol, subsampling=config.subsampling, echo=echo)
        self.model = create_model(config.arch)
        self.restorer = Restorer(self.model, task, task_params=task_params, device=device, dtype="fp32",
                                 folded=False)

    def __call__(self, weights: dict) -> dict:
        self.model.load_state_dict(weights)
        return self.validator(self.restorer)


def _centre_crops(root: Path, crop: int, echo):
    """(relative path, float RGB centre crop of at most ``crop`` px) of every readable image under ``root``."""
    from ..errors import ImageError
    from ..imageio import discover, read_image

    try:
        sources = discover(root, recursive=True)
    except FileNotFoundError:
        raise IraeError(f"--val {root}: no such folder") from None
    for src in sources:
        try:
            x, _ = read_image(src.path)
        except ImageError as e:
            echo(f"irae: warning: {e}; left out of validation")
            continue
        x = to_rgb_u8(x).float() / 255.0
        h, w = x.shape[-2:]
        ch, cw = min(h, crop), min(w, crop)
        top, left = (h - ch) // 2, (w - cw) // 2
        yield src.rel.as_posix(), x[:, top:top + ch, left:left + cw].contiguous()


def _mean_psnr(values: list[float]) -> float:
    """Mean ignoring infinite PSNRs (identical images), NaN when any image gave NaN."""
    from ..metrics import mean_ignoring_inf

    finite = [v for v in values if not math.isnan(v)]
    return round(mean_ignoring_inf(finite).mean, 4) if len(finite) == len(values) else float("nan")


def summarize_val(scores: dict | None) -> str:
    if not scores:
        return "-"
    return " ".join(f"{name} {v['psnr_rgb_u8']:.2f}" for name, v in scores.items())
