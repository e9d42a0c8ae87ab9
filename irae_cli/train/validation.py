"""Validation during training: held-out photos, degraded once at fixed levels, scored on the EMA weights."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..degradations import Level, build_levels, generator_for
from ..errors import IraeError
from ..pixels import from_levels_u8
from ..tasks import Task
from .data import to_rgb_u8


def validation_levels(task: str, noise_protocol: str, subsampling: str) -> list[Level]:
    """The test-set levels of ``task`` at their defaults (what ``irae degrade`` and the benchmark use),
    kept in the run's noise protocol and chroma subsampling."""
    if task == "denoise":
        return build_levels(task, noise_protocol=noise_protocol)
    if task == "jpeg":
        return build_levels(task, subsampling=subsampling)
    return build_levels(task)


class Validator:
    """Held-out centre crops, degraded once per level, scored with PSNR on uint8-rounded RGB.

    Each crop is degraded exactly as ``irae degrade`` would degrade it (``Level.stored``
    with the generator of ``(val_seed, relative path, level name)``); ``val_seed`` is
    independent of the training ``--seed``, so runs with different training seeds are
    validated on identical inputs.
    """

    def __init__(self, root: Path, task: Task, task_params: dict, *, crop: int, seed: int,
                 noise_protocol: str = "float", subsampling: str = "4:2:0", echo=print) -> None:
        self.task, self.task_params = task, task_params
        self.seed = seed
        self.levels = validation_levels(task.name, noise_protocol, subsampling)
        self.items: list[dict] = []
        for rel, clean in _centre_crops(root, crop, echo):
            self.items.extend(self._degraded(rel, clean, level) for level in self.levels)
        if not self.items:
            raise IraeError(f"--val {root}: no readable images found")
        self.images = len({it["rel"] for it in self.items})
        self.pixels = sum(it["clean"].shape[-1] * it["clean"].shape[-2] for it in self.items)
        self.input_psnr = self._score([self.task.model_output(self.task.model_input(
            it["degraded"][None], None if it["mask"] is None else it["mask"][None], task_params), task_params)[0]
            for it in self.items])

    def _degraded(self, rel: str, clean: torch.Tensor, level: Level) -> dict:
        y, mask = level.stored(clean, generator_for(self.seed, rel, level.name))
        return {"rel": rel, "level": level.name, "clean": clean, "degraded": y, "mask": mask,
                "true_level": _true_level(level, clean, generator_for(self.seed, rel, level.name))}

    def _score(self, outputs: list[torch.Tensor]) -> dict:
        from ..metrics import psnr

        per: dict = {}
        for it, out in zip(self.items, outputs):
            entry = per.setdefault(it["level"], {"psnr_rgb_u8": [], "psnr_hole_rgb_u8": []})
            entry["psnr_rgb_u8"].append(psnr(out, it["clean"]))
            if it["mask"] is not None:
                entry["psnr_hole_rgb_u8"].append(psnr(out, it["clean"], mask=it["mask"]))
        return {name: {key: _mean_psnr(values) for key, values in entry.items() if values}
                for name, entry in per.items()}

    def __call__(self, restorer, known_level: bool = False) -> dict:
        """Scores per level; a sigma-conditioned model restores at each image's estimated sigma (the
        restorer's default, what restore does), or with ``known_level`` at the sigma it was degraded with;
        a quality-conditioned one always at the quality it was saved at (what restore reads from a file)."""
        outputs = []
        known_level = known_level or restorer.needs_given_level
        for it in self.items:
            mask = None if it["mask"] is None else it["mask"][None]
            if known_level:
                outputs.append(restorer(it["degraded"][None], mask, torch.tensor([it["true_level"]]))[0])
            else:
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
        self.model = create_model(config.model_config())
        self.restorer = Restorer(self.model, task, task_params=task_params, device=device, dtype="fp32",
                                 folded=False)
        self.sigma_estimates: dict[str, float] = {}
        if self.restorer.conditioned and not self.restorer.needs_given_level:
            for name in {it["level"] for it in self.validator.items}:
                estimates = [float(self.restorer.levels_for(it["degraded"][None])[0])
                             for it in self.validator.items if it["level"] == name]
                self.sigma_estimates[name] = round(sum(estimates) / len(estimates), 3)

    def __call__(self, weights: dict) -> dict:
        """Scores per level; for a model conditioned on sigma also ``psnr_rgb_u8_known_sigma`` (restored at
        the true sigma) beside the main figure (at the estimated one) and the mean ``sigma_estimate`` (a
        quality-conditioned model is scored at the true quality only: restore reads it exactly)."""
        self.model.load_state_dict(weights)
        scores = self.validator(self.restorer)
        if not self.restorer.conditioned or self.restorer.needs_given_level:
            return scores
        known = self.validator(self.restorer, known_level=True)
        for name, entry in scores.items():
            entry["psnr_rgb_u8_known_sigma"] = known[name]["psnr_rgb_u8"]
            entry["sigma_estimate"] = self.sigma_estimates[name]
        return scores


def _centre_crops(root: Path, crop: int, echo):
    """(relative path, float RGB centre crop of at most ``crop`` px) of every readable image under ``root``."""
    from ..errors import ImageError
    from ..files import discover
    from ..imageio import read_image

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
        x = from_levels_u8(to_rgb_u8(x))
        h, w = x.shape[-2:]
        ch, cw = min(h, crop), min(w, crop)
        top, left = (h - ch) // 2, (w - cw) // 2
        yield src.rel.as_posix(), x[:, top:top + ch, left:left + cw].contiguous()


def _true_level(level: Level, clean: torch.Tensor, g: torch.Generator) -> float | None:
    """The sigma a denoise level degraded this image with (drawn again from the same generator when the
    level is a range), the quality a JPEG level saved it at (the last one, as the file's header says);
    None for inpainting."""
    if level.task == "jpeg":
        return float(level.params["quality"])
    if level.task != "denoise":
        return None
    if "sigma" in level.params:
        return float(level.params["sigma"])
    return float(level.draw(clean, g)[2]["sigma"])


def _mean_psnr(values: list[float]) -> float:
    """Mean ignoring infinite PSNRs (identical images), NaN when any image gave NaN."""
    from ..metrics import mean_ignoring_inf

    finite = [v for v in values if not math.isnan(v)]
    return round(mean_ignoring_inf(finite).mean, 4) if len(finite) == len(values) else float("nan")


def summarize_val(scores: dict | None) -> str:
    if not scores:
        return "-"
    return " ".join(f"{name} {v['psnr_rgb_u8']:.2f}" for name, v in scores.items())
