"""The batch degrader: clean uint8 patches -> (model input, clean) float32 batches, drawn from its own
generators, whose states it hands to the checkpoint and takes back on resume."""

from __future__ import annotations

import concurrent.futures
import os

import torch
from PIL import Image

from ..degradations import (add_gaussian_noise, derive_seed, jpeg_batch_cuda, jpeg_batch_u8, nvjpeg_problem,
                            quantize_u8, random_mask)
from ..pixels import from_levels_u8
from ..tasks import Task
from .config import TrainConfig

MASK_BANK_SIZE = 1024  # masks drawn once per run; x8 flips/rotations at sampling time


def make_mask_bank(config: TrainConfig, size: int = MASK_BANK_SIZE) -> torch.Tensor:
    """(size, 1, patch, patch) bool masks (True = missing), kinds in turn, from a seed-derived generator."""
    g = torch.Generator().manual_seed(derive_seed(config.seed, "mask-bank", config.patch))
    kinds = config.masks
    masks = [random_mask(kinds[i % len(kinds)], config.patch, config.patch, g, config.hole_range)
             for i in range(size)]
    return torch.stack(masks)


class Degrader:
    """Clean uint8 patches -> (model input, clean) float32 batches on the training device.

    ``device_gen`` lives on the data's device (the patch sampler draws from it too), ``host_gen`` on the
    CPU (JPEG qualities).  When the photos stay on the CPU but training runs on a GPU, the noise is drawn
    on the GPU from a third generator made on first use.
    """

    def __init__(self, task: Task, config: TrainConfig, device: torch.device, device_gen: torch.Generator,
                 host_gen: torch.Generator, task_params: dict) -> None:
        self.task, self.c, self.device = task, config, device
        self.g, self.host = device_gen, host_gen
        self.task_params = task_params
        self.pool = None
        self.nvjpeg = False
        self.nvjpeg_problem = None  # why 4:4:4 on CUDA fell back to Pillow
        self.masks = None
        self.last_mask: torch.Tensor | None = None  # the holes of the last inpainting batch (for the loss)
        self.last_sigma: torch.Tensor | None = None  # the sigma of each patch of the last denoise batch
        self.last_quality: torch.Tensor | None = None  # the JPEG quality of each patch of the last jpeg batch
        self._gen_on_device: torch.Generator | None = None
        self._noise_state: torch.Tensor | None = None  # from a checkpoint, for when that generator is made
        if task.name == "jpeg":
            if config.subsampling == "4:4:4" and device.type == "cuda":
                self.nvjpeg_problem = nvjpeg_problem(device)
                self.nvjpeg = self.nvjpeg_problem is None
            if not self.nvjpeg:
                workers = min(8, os.cpu_count() or 1)
                self.pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
        if task.needs_mask:
            self.masks = make_mask_bank(config).to(device)

    @property
    def jpeg_engine(self) -> str | None:
        if self.task.name != "jpeg":
            return None
        return "nvjpeg (torchvision, 4:4:4)" if self.nvjpeg else f"Pillow {Image.__version__} (libjpeg)"

    @property
    def last_level(self) -> torch.Tensor | None:
        """The degradation level of each patch of the last batch: its sigma (denoise), its JPEG quality
        (jpeg), or None (inpaint). What a conditioned model is told, and what the loss may be weighted by."""
        return self.last_quality if self.task.name == "jpeg" else self.last_sigma

    def rng_state(self) -> dict:
        """{"data", "host"[, "noise"]}: the states of every generator this degrader draws from."""
        state = {"data": self.g.get_state(), "host": self.host.get_state()}
        if self._gen_on_device is not None:
            state["noise"] = self._gen_on_device.get_state()
        return state

    def load_rng_state(self, state: dict) -> None:
        """Take back what ``rng_state`` returned; "data" and "host" may be left out (fresh streams kept)."""
        if "data" in state:
            self.g.set_state(state["data"])
        if "host" in state:
            self.host.set_state(state["host"])
        self._noise_state = state.get("noise")

    def reseed(self, seed: int, rank: int) -> None:
        """New, per-rank distinct data and host streams (a resume with another number of processes)."""
        self.g.manual_seed(derive_seed(seed, "resume-data", rank))
        self.host.manual_seed(derive_seed(seed, "resume-host", rank))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def __call__(self, clean_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean = from_levels_u8(clean_u8.to(self.device, non_blocking=True))
        if self.task.name == "denoise":
            return self._noisy(clean), clean
        if self.task.name == "jpeg":
            return self._compressed(clean_u8), clean
        return self._with_holes(clean), clean

    def _noisy(self, clean: torch.Tensor) -> torch.Tensor:
        lo, hi = self.c.sigma
        n = clean.shape[0]
        sigma = lo + (hi - lo) * torch.rand(n, generator=self.g, device=self.g.device)
        self.last_sigma = sigma.to(self.device)
        noisy = add_gaussian_noise(clean, self.last_sigma, self._noise_gen(clean))
        return quantize_u8(noisy) if self.c.noise_protocol == "clip" else noisy

    def _compressed(self, clean_u8: torch.Tensor) -> torch.Tensor:
        c = self.c
        drawn = torch.randint(c.quality[0], c.quality[1] + 1, (clean_u8.shape[0],), generator=self.host)
        self.last_quality = drawn.to(self.device, torch.float32, non_blocking=True)
        qualities = drawn.tolist()
        if self.nvjpeg:
            y = jpeg_batch_cuda(clean_u8.to(self.device), qualities)
        else:
            y = jpeg_batch_u8(clean_u8, qualities, c.subsampling, self.pool)
        return from_levels_u8(y.to(self.device, non_blocking=True))

    def _with_holes(self, clean: torch.Tensor) -> torch.Tensor:
        """A mask from the bank, flipped/rotated at random."""
        n, dev = clean.shape[0], self.masks.device
        k = torch.randint(0, self.masks.shape[0], (n,), generator=self.g, device=self.g.device).to(dev)
        flags = torch.randint(0, 8, (n,), generator=self.g, device=self.g.device).to(dev).view(n, 1, 1, 1)
        m = self.masks[k]
        m = torch.where((flags & 1).bool(), m.transpose(-1, -2), m)
        m = torch.where((flags & 2).bool(), m.flip(-2), m)
        m = torch.where((flags & 4).bool(), m.flip(-1), m)
        self.last_mask = m
        return self.task.model_input(clean, m, self.task_params)

    def _noise_gen(self, clean: torch.Tensor) -> torch.Generator:
        if self.g.device == clean.device:
            return self.g
        # Photos too big for the GPU: the sampler's generator is on the CPU; noise is drawn on the GPU.
        if self._gen_on_device is None:
            self._gen_on_device = torch.Generator(device=clean.device).manual_seed(
                derive_seed(self.c.seed, "noise-on-device"))
            if self._noise_state is not None:  # checkpointed, so resume stays exact
                self._gen_on_device.set_state(self._noise_state)
        return self._gen_on_device
