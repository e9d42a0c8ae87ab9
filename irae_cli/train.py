"""Training: random patches of real photos, degraded on the fly, L1 to the clean patch.

``train(session, given)`` is the whole of ``irae train``; the pieces below it
(patch sampler, batch degrader, EMA, schedule, checkpoint I/O, validator) are
plain objects that the tests use directly.

What a run guarantees
---------------------
* **Reproducible.** Every random draw (which image, where, which flip or
  rotation, sigma, JPEG quality, mask) comes from two ``torch.Generator``s
  seeded from ``--seed`` (one on the data's device, one on the host), never
  from global state.  A run's numbers are a function of (config, data, seed,
  device).
* **Resumable exactly.** The checkpoint holds model, EMA, optimiser state,
  step, generator states and the config; the learning rate is a pure function
  of the step, so "stop after k steps, resume, continue to N" gives the same
  weights as an uninterrupted N-step run (bit-exact on the CPU; on a GPU up to
  cuDNN's non-deterministic kernels).  The ActNorm initialisation runs once on
  the first batch of a fresh run and never on resume.
* **Time-bounded.** ``--minutes`` counts wall-clock time from the start of the
  command (data loading and periodic validation included) and stops early
  enough to leave room for the final validation and save, estimated from the
  last validation (or from the training throughput before the first one).
  Every invocation makes at least one step (a fresh model must be initialised
  before it is saved).  With ``--minutes`` alone, the schedule length is
  estimated from the speed of steps 2-12 and stored, so the cosine reaches its
  floor near the end of the budget; a resumed run keeps that length.
* **Multi-GPU.** Under ``torchrun`` (WORLD_SIZE > 1) the same command trains
  with DistributedDataParallel: ``--batch-size`` is per process, each rank
  draws its own patches from its own seeded generators, rank 0 initialises the
  ActNorms and broadcasts every parameter and buffer, and only rank 0
  validates and writes files.  Checkpoints hold every rank's generator states,
  so a resume with the same number of processes is a replay too.

Precision (``--dtype``)
-----------------------
On CUDA, ``bf16`` (the default where supported) autocasts only the coupling
networks of an invertible model (3x3 conv, ActNorm, ReLU, 1x1 conv, ActNorm,
ReLU, 3x3 conv); their output (shift and log-scale) is cast back to float32.
The flow arithmetic stays float32 with TF32 off: the flows' ActNorms, the
orthogonal 1x1 convolutions, the application of the affine coupling
(``x_a * exp(log_s) + t``), squeeze/split, the loss and the optimiser.  Rounding
there is what the inverse direction amplifies.  The non-invertible comparator
(``cnn``) is autocast as a whole.  ``fp32`` runs everything in IEEE float32.
The CPU always trains in float32.

Loss
----
L1 between the model's output and the clean patch (the paper's loss), as the
mean over every pixel.  For inpainting the loss also covers the known pixels:
the restored image is ``D^-1(E(y))`` everywhere and only ``Task.finish``
pastes the known pixels back, so the flows are trained to carry the known
context through unchanged -- hole-only L1 would leave that half of the mapping
untrained and let it drift.

Learning rate: linear warm-up over ``--warmup`` steps (default 2 % of the
run), then cosine decay to 1 % of ``--lr`` at ``--steps``; Adam; gradient-norm
clipping.  The EMA decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so short
runs are not dominated by the initial weights; the EMA copy is what is
validated and saved (ActNorm ``initialized`` flags and other buffers are
copied, not averaged).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import math
import os
import platform
import re
import sys
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .degradations import (MASK_KINDS, SUBSAMPLING, add_gaussian_noise, derive_seed, jpeg_compress, quantize_u8,
                      random_mask)
from .distributed import Dist, init_distributed
from .distributed import rank_device as train_device
from .divergence import DivergenceGuard
from .errors import IraeError
from .model.flows import batched_invconv_weights
from .tasks import Task, get_task

CHECKPOINT_FORMAT = "irae-train-checkpoint"
CHECKPOINT_VERSION = "1"
LOG_FORMAT = "irae-train-log"
NOISE_PROTOCOLS = ("paper", "clip")
VAL_LEVELS = {"denoise": (15, 25, 50), "jpeg": (10, 20, 30, 40), "inpaint": ("box", "strokes")}
LR_FLOOR = 0.01  # cosine ends at this fraction of --lr
MASK_BANK_SIZE = 1024  # masks drawn once per run; x8 flips/rotations at sampling time
CALIBRATION_STEPS = (2, 12)  # with --minutes alone: the steps whose speed sets the schedule length
# ... which is set again from the speed since then at these fractions of the budget: the first steps
# can be far slower than the rest (autotuning, other runs starting beside this one on a shared GPU),
# and a schedule that ends at half the budget wastes the other half.
RECALIBRATE_AT = (0.1, 0.25, 0.5)
PROVISIONAL_WARMUP = 100  # warm-up length used until the schedule length is known
DEFAULT_VAL_EVERY = 2000
DEFAULT_INVERSE_GAIN = 1000.0  # measured: keeps the fp32 round trip far inside half an 8-bit level (README)
DEFAULT_INVERSE_GAIN_EVERY = 4
INVERSE_PROBE = 1e-3  # size of the finite-difference probe on the restored patches
DEFAULT_CHECKPOINT_EVERY = 1000
DEVICE_DATA_FRACTION = 0.5  # keep the photos on the GPU when they take at most this much free memory


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the weights a run produces (stored in checkpoints)."""

    task: str = "denoise"
    arch: str = "paper-denoise"
    steps: int | None = None  # schedule length; None = estimated from --minutes
    patch: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int | None = None  # None = 2 % of steps
    clip: float = 10.0
    ema: float = 0.999
    seed: int = 0
    sigma: tuple[float, float] = (0.0, 55.0)
    noise_protocol: str = "clip"  # what restore sees: real noisy files are clipped 8-bit
    quality: tuple[int, int] = (10, 90)
    subsampling: str = "4:2:0"
    masks: tuple[str, ...] = ("box", "strokes")
    hole_range: tuple[float, float] = (0.05, 0.4)
    # Largest gain allowed to the inverse (degrade) direction, measured by finite
    # differences each step and enforced by a hinge penalty; 0 = off.  The inverse of a
    # denoiser amplifies perturbations of its output, and fp32 rounding of the restored
    # image (~6e-8) times that gain is the round-trip error: unpenalised, 32 minutes of
    # CPU training reached a gain of ~4,000 and a 6e-4 round trip (README, "Precision").
    inverse_gain: float = 0.0
    # The penalty's probe costs a whole extra inverse pass and its backward (~2x a step), while
    # the gain drifts slowly: probing every N-th step, weighted by N, buys the bound at ~1/N of it.
    inverse_gain_every: int = 1
    # How an IRAE starts (model.initialize): "data" = each flow from its own data and rotations;
    # "identity" = the decoder a copy of the encoder, so the untrained model returns its input.
    init_start: str = "data"
    # Start from trained weights of the same preset (fine-tuning, another task, a new schedule or batch
    # size) instead of a fresh initialisation; the path as given, its sha256 goes to the summary.
    init_from: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        for key in ("sigma", "quality", "masks", "hole_range"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def degradation(self) -> dict:
        """The ranges that describe this run's training degradation (weights metadata)."""
        if self.task == "denoise":
            return {"sigma": list(self.sigma), "noise_protocol": self.noise_protocol}
        if self.task == "jpeg":
            return {"quality": list(self.quality), "subsampling": self.subsampling}
        return {"masks": list(self.masks), "hole_range": list(self.hole_range)}


@dataclass
class Session:
    """Per-invocation settings: where things are and how long to run; not part of the math."""

    data: Path | None = None
    out: Path | None = None
    checkpoint: Path | None = None
    log: Path | None = None
    resume: Path | None = None
    minutes: float | None = None
    stop_at: int | None = None
    val: Path | None = None
    val_every: int | None = None
    val_crop: int = 512
    val_seed: int = 0
    checkpoint_every: int | None = None
    log_every: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    overwrite: bool = False
    quiet: bool = False
    progress: bool | None = None  # None = a live bar when stderr is a terminal
    echo: object = None  # callable(str) for one-line notices; default: stderr


TUNABLE = {f.name for f in dataclasses.fields(TrainConfig)}


def default_lr(task: str) -> float:
    return 1e-4 if task == "inpaint" else 1e-3


def build_config(given: dict, device: torch.device) -> TrainConfig:
    """Fill what the user did not give with the task's defaults and check every value."""
    from .model import list_models

    task = get_task(given.get("task") or "denoise")
    unknown = set(given) - TUNABLE
    if unknown:
        raise IraeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    d = {k: v for k, v in given.items() if v is not None}
    d["task"] = task.name
    d.setdefault("arch", task.default_arch)
    d.setdefault("patch", 128 if task.needs_mask else 64)
    d.setdefault("batch_size", 64 if device.type == "cuda" else 8)
    d.setdefault("lr", default_lr(task.name))
    from .model import PRESETS

    if getattr(PRESETS.get(d["arch"]), "arch", None) == "irae":
        d.setdefault("inverse_gain", DEFAULT_INVERSE_GAIN)
        d.setdefault("inverse_gain_every", DEFAULT_INVERSE_GAIN_EVERY)
    # Inpainting starts from its classical pre-fill, which only an identity start preserves.
    d.setdefault("init_start", "identity" if task.needs_mask else "data")
    defaults = task.train_defaults
    if task.name == "denoise":
        d.setdefault("sigma", tuple(defaults.get("sigma", (0.0, 55.0))))
    if task.name == "jpeg":
        d.setdefault("quality", tuple(defaults.get("quality", (10, 90))))
        d.setdefault("subsampling", defaults.get("subsampling", "4:2:0"))
    if task.needs_mask:
        d.setdefault("masks", tuple(defaults.get("masks", ("box", "strokes"))))
        d.setdefault("hole_range", tuple(defaults.get("hole_range", (0.05, 0.4))))
    config = TrainConfig.from_dict(d)
    if config.arch not in list_models():
        raise IraeError(f"--arch {config.arch!r} is not a known model; use one of: {', '.join(list_models())}")
    _validate(config)
    return config


def inverse_gain_penalty(model, restored: torch.Tensor, inp: torch.Tensor, max_gain: float,
                         gen: torch.Generator) -> torch.Tensor:
    """Hinge on the inverse direction's gain, one finite difference per patch (Behrmann et al. 2021).

    inverse(restored + d) - inp = inverse(restored + d) - inverse(restored) in exact
    arithmetic, so one extra inverse pass measures ||J_inv d|| / ||d|| for a random d.
    """
    d = torch.randn(restored.shape, generator=gen, device=gen.device).to(restored.device, restored.dtype)
    d = d * INVERSE_PROBE
    back = model.inverse(restored + d)
    gain = (back.float() - inp).flatten(1).norm(dim=1) / d.float().flatten(1).norm(dim=1)
    return torch.relu(torch.log(gain / max_gain)).pow(2).mean()


def load_init_weights(config: TrainConfig) -> tuple[dict, dict]:
    """(what they were, state dict) of --init-from's weights, which must be of the run's preset."""
    from .model import config_to_json, create_model
    from .weights import load_weights

    model = create_model(config.arch)
    try:
        loaded = load_weights(config.init_from)
    except Exception as e:  # WeightsError or a missing file: one line naming the file
        raise IraeError(f"--init-from: {e}") from None
    if config_to_json(loaded.model.config) != config_to_json(model.config):
        was = (loaded.training or {}).get("arch") or "another"
        raise IraeError(f"--init-from {config.init_from}: holds a {was} model, not --arch {config.arch}; "
                        f"pass weights of the {config.arch} preset, or --arch {was}")
    training = loaded.training or {}
    record = {"path": str(config.init_from), "sha256": loaded.sha256, "task": loaded.task,
              "arch": training.get("arch"), "patches_seen": training.get("patches_seen"),
              "minutes": training.get("minutes"), "device": training.get("device")}
    return record, loaded.model.state_dict()


def _validate(c: TrainConfig) -> None:
    from .model import create_model

    def bad(msg: str) -> None:
        raise IraeError(msg)

    if c.steps is not None and c.steps < 1:
        bad(f"--steps must be at least 1, not {c.steps}")
    if c.batch_size < 1:
        bad(f"--batch-size must be at least 1, not {c.batch_size}")
    if c.inverse_gain != 0 and not (c.inverse_gain >= 1 and math.isfinite(c.inverse_gain)):
        bad(f"--inverse-gain must be 0 (off) or at least 1, not {c.inverse_gain}")
    if c.init_start not in ("data", "identity"):
        bad(f"--init-start must be data or identity, not {c.init_start!r}")
    if c.inverse_gain_every < 1:
        bad(f"--inverse-gain-every must be at least 1, not {c.inverse_gain_every}")
    if not (c.lr > 0 and math.isfinite(c.lr)):
        bad(f"--lr must be a positive number, not {c.lr}")
    if c.warmup is not None and c.warmup < 0:
        bad(f"--warmup must be >= 0 steps, not {c.warmup}")
    if c.clip < 0:
        bad(f"--clip must be >= 0 (0 = no clipping), not {c.clip}")
    if not 0 <= c.ema < 1:
        bad(f"--ema must be in [0, 1) (0 = off), not {c.ema}")
    multiple = int(getattr(create_model(c.arch), "size_multiple", 1))
    if c.patch < 8 or c.patch % multiple:
        bad(f"--patch {c.patch} must be at least 8 and a multiple of {multiple} for --arch {c.arch}")
    if c.noise_protocol not in NOISE_PROTOCOLS:
        bad(f"--noise-protocol must be one of {', '.join(NOISE_PROTOCOLS)}, not {c.noise_protocol!r}")
    if c.sigma[1] > 255:
        bad(f"--sigma {c.sigma[0]:g}-{c.sigma[1]:g} is beyond the 0-255 scale")
    if not 1 <= c.quality[0] <= c.quality[1] <= 100:
        bad(f"--quality {c.quality[0]}-{c.quality[1]} must lie within 1-100")
    if c.subsampling not in SUBSAMPLING:
        bad(f"--subsampling must be one of {', '.join(SUBSAMPLING)}, not {c.subsampling!r}")
    if not c.masks or any(m not in MASK_KINDS for m in c.masks):
        bad(f"--mask {','.join(c.masks)!r}: use one or more of {', '.join(MASK_KINDS)}")
    if not 0 < c.hole_range[1] <= 0.9:
        bad(f"--hole-ratio {c.hole_range[0]}-{c.hole_range[1]} must lie within 0-0.9 with a positive top")


def warmup_steps(c: TrainConfig) -> int:
    if c.warmup is not None:
        return c.warmup
    if c.steps is None:
        return PROVISIONAL_WARMUP
    return max(1, round(0.02 * c.steps))


def lr_at(step: int, c: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warm-up, then cosine to LR_FLOOR x lr."""
    warm = warmup_steps(c)
    if step < warm:
        return c.lr * (step + 1) / warm
    if c.steps is None or c.steps <= warm:
        return c.lr
    p = min(1.0, (step - warm) / max(1, c.steps - warm))
    return c.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))


def ema_decay_at(step: int, decay: float) -> float:
    return min(decay, (1 + step) / (10 + step))


# --------------------------------------------------------------------------- data

@dataclass
class TrainData:
    """All training pixels as one flat uint8 buffer, plus where each image lies in it."""

    buffer: torch.Tensor  # uint8, 1-D
    offsets: torch.Tensor  # int64 (N,)
    heights: torch.Tensor  # int64 (N,)
    widths: torch.Tensor  # int64 (N,)
    description: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.buffer.device

    def to(self, device: torch.device) -> "TrainData":
        return TrainData(self.buffer.to(device), self.offsets.to(device), self.heights.to(device),
                         self.widths.to(device), self.description)


def _to_rgb_u8(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float [0, 1] from read_image -> (3, H, W) uint8 (gray replicated, 16-bit rounded)."""
    u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8)
    return u8.expand(3, -1, -1).contiguous() if u8.shape[0] == 1 else u8


def load_images(root: Path, patch: int, echo) -> tuple[list[torch.Tensor], dict]:
    """Every image under ``root`` (recursive) as RGB uint8; images smaller than a patch are left out."""
    from .errors import ImageError
    from .imageio import read_image
    from .files import discover

    try:
        sources = discover(root, recursive=True)
    except FileNotFoundError:
        raise IraeError(f"{root}: no such folder or file; give a folder of training photos or a .safetensors pack")
    images, skipped, pixels = [], [], 0
    for src in sources:
        try:
            x, _ = read_image(src.path)
        except ImageError as e:
            echo(f"irae: warning: {e}; left out of training")
            skipped.append(str(src.rel))
            continue
        if min(x.shape[-2:]) < patch:
            echo(f"irae: warning: {src.path}: {x.shape[-1]}x{x.shape[-2]} is smaller than a {patch}px patch; "
                 f"left out of training")
            skipped.append(str(src.rel))
            continue
        u8 = _to_rgb_u8(x)
        pixels += u8.shape[-1] * u8.shape[-2]
        images.append(u8)
    if not images:
        raise IraeError(f"{root}: no usable training images (found {len(sources)} image files, none at least "
                        f"{patch}x{patch}); add photos or lower --patch")
    desc = {"source": str(root), "kind": "folder", "images": len(images), "megapixels": round(pixels / 1e6, 3),
            "skipped": skipped}
    return images, desc


def load_training_data(source: Path, patch: int, device: torch.device, echo) -> TrainData:
    """DATA (a folder of images or a .safetensors pack of crops) -> TrainData, on ``device`` when it fits."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".safetensors":
        try:
            from .pack import load_pack
        except ImportError:
            raise IraeError(f"{source}: reading training packs needs irae_cli.pack, which is not installed") from None
        crops, meta = load_pack(source)
        if crops.ndim != 4 or crops.shape[1] != 3 or crops.dtype != torch.uint8:
            raise IraeError(f"{source}: pack holds {tuple(crops.shape)} {crops.dtype}, not (N, 3, H, W) uint8 crops")
        if min(crops.shape[-2:]) < patch:
            raise IraeError(f"{source}: pack crops are {crops.shape[-1]}px, smaller than --patch {patch}")
        n, _, h, w = crops.shape
        buffer = crops.contiguous().reshape(-1)
        offsets = torch.arange(n, dtype=torch.int64) * (3 * h * w)
        heights = torch.full((n,), h, dtype=torch.int64)
        widths = torch.full((n,), w, dtype=torch.int64)
        desc = {"source": str(source), "kind": "pack", "images": int(n), "megapixels": round(n * h * w / 1e6, 3),
                "crop": [int(h), int(w)], "pack": json.loads(json.dumps({k: v for k, v in (meta or {}).items()
                                               if k not in ("origin", "sources")}, default=str))}
    else:
        images, desc = load_images(source, patch, echo)
        sizes = torch.tensor([im.numel() for im in images], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        heights = torch.tensor([im.shape[1] for im in images], dtype=torch.int64)
        widths = torch.tensor([im.shape[2] for im in images], dtype=torch.int64)
        buffer = torch.cat([im.reshape(-1) for im in images])
        del images
    data = TrainData(buffer, offsets, heights, widths, desc)
    data.description["on_device"] = False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if buffer.numel() <= DEVICE_DATA_FRACTION * free:
            data = data.to(device)
            data.description["on_device"] = True
        else:
            echo(f"irae: note: the training photos ({buffer.numel() / 2**30:.1f} GiB) do not fit comfortably in "
                 f"GPU memory; patches are cut on the CPU and copied each step (slower)")
            data.buffer = data.buffer.pin_memory()
    return data


class PatchSampler:
    """Uniformly random patches (every patch position of every image equally likely), flipped/rotated.

    Fully batched: one randint picks the patch positions, one gather reads the
    pixels, with the 8 flips/rotations folded into the gather's index grid.
    """

    def __init__(self, data: TrainData, patch: int, generator: torch.Generator) -> None:
        if generator.device != data.device:
            raise ValueError("the sampler's generator must live on the data's device")
        self.data, self.patch, self.g = data, patch, generator
        dev = data.device
        self.valid_h = (data.heights - patch + 1).clamp_min(0)
        self.valid_w = (data.widths - patch + 1).clamp_min(0)
        counts = self.valid_h * self.valid_w
        self.counts = counts
        self.cum = torch.cumsum(counts, 0)
        self.total = int(self.cum[-1])
        if self.total <= 0:
            raise IraeError(f"no image is at least {patch}x{patch}; lower --patch")
        self.plane = data.heights * data.widths
        self.ar = torch.arange(patch, device=dev)
        self.channels = torch.arange(3, device=dev).view(1, 3, 1, 1)

    def sample(self, n: int) -> torch.Tensor:
        """(n, 3, patch, patch) uint8 on the data's device."""
        p, g, dev = self.patch, self.g, self.data.device
        r = torch.randint(0, self.total, (n,), generator=g, device=dev)
        k = torch.searchsorted(self.cum, r, right=True)
        local = r - (self.cum[k] - self.counts[k])
        vw = self.valid_w[k]
        y, x = local // vw, local % vw
        flags = torch.randint(0, 8, (n,), generator=g, device=dev).view(n, 1, 1)
        u = self.ar.view(1, p, 1).expand(n, p, p)
        v = self.ar.view(1, 1, p).expand(n, p, p)
        transpose, flip_y, flip_x = (flags & 1).bool(), (flags & 2).bool(), (flags & 4).bool()
        u, v = torch.where(transpose, v, u), torch.where(transpose, u, v)
        u = torch.where(flip_y, p - 1 - u, u)
        v = torch.where(flip_x, p - 1 - v, v)
        w = self.data.widths[k].view(n, 1, 1)
        pix = (y.view(n, 1, 1) + u) * w + (x.view(n, 1, 1) + v)
        idx = self.data.offsets[k].view(n, 1, 1, 1) + self.channels * self.plane[k].view(n, 1, 1, 1) \
            + pix.unsqueeze(1)
        return self.data.buffer[idx]


# --------------------------------------------------------------------------- degradation

def _jpeg_one(arr: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def jpeg_batch_u8(x: torch.Tensor, qualities: list[int], subsampling: str = "4:2:0",
                  pool: concurrent.futures.Executor | None = None) -> torch.Tensor:
    """Real JPEG round trip of a uint8 batch (N, 3, H, W) with Pillow, one quality per image.

    The same encoder settings as ``degrade.jpeg_compress`` (identical bytes),
    without its float round trips, and spread over threads (Pillow releases the
    GIL while coding).
    """
    arrs = x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    ss = SUBSAMPLING[subsampling]
    if pool is None:
        out = [_jpeg_one(a, q, ss) for a, q in zip(arrs, qualities)]
    else:
        out = list(pool.map(_jpeg_one, arrs, qualities, [ss] * len(qualities)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def nvjpeg_problem(device: torch.device) -> str | None:
    """None when the nvJPEG round trip works on ``device``; else why not (one line)."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        jpeg_batch_cuda(torch.zeros(2, 3, 16, 16, dtype=torch.uint8, device=device), [50, 60])
        return None
    except Exception as e:  # any build without nvJPEG, or a driver problem: Pillow it is
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _nvjpeg_available(device: torch.device) -> bool:
    return nvjpeg_problem(device) is None


def _bytes_to_host(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
    """The CUDA encoder returns its JPEG bytes on the device, the batched decoder takes host tensors only
    ("Input list must contain tensors on CPU"): one copy of all the (small) files, then views."""
    sizes = [int(e.numel()) for e in encoded]
    return list(torch.cat(list(encoded)).cpu().split(sizes))


def jpeg_batch_cuda(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """nvJPEG through torchvision (4:4:4 only): one batched encode and decode per distinct quality."""
    import warnings

    from torchvision.io import decode_jpeg, encode_jpeg

    out = torch.empty_like(x)
    q = torch.tensor(qualities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for quality in sorted(set(qualities)):
            idx = torch.nonzero(q == quality).flatten().tolist()
            encoded = encode_jpeg([x[i] for i in idx], quality=int(quality))
            decoded = decode_jpeg(_bytes_to_host(encoded), device=x.device)
            for i, d in zip(idx, decoded):
                out[i] = d
    return out


def make_mask_bank(config: TrainConfig, size: int = MASK_BANK_SIZE) -> torch.Tensor:
    """(size, 1, patch, patch) bool masks (True = missing), kinds in turn, from a seed-derived generator."""
    g = torch.Generator().manual_seed(derive_seed(config.seed, "mask-bank", config.patch))
    kinds = config.masks
    masks = [random_mask(kinds[i % len(kinds)], config.patch, config.patch, g, config.hole_range)
             for i in range(size)]
    return torch.stack(masks)


class Degrader:
    """Clean uint8 patches -> (model input, clean) float32 batches on the training device."""

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

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def __call__(self, clean_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = clean_u8.shape[0]
        clean = clean_u8.to(self.device, non_blocking=True).float().div_(255.0)
        c = self.c
        if self.task.name == "denoise":
            lo, hi = c.sigma
            sigma = lo + (hi - lo) * torch.rand(n, generator=self.g, device=self.g.device)
            noisy = add_gaussian_noise(clean, sigma.to(self.device), self._noise_gen(clean))
            return (quantize_u8(noisy) if c.noise_protocol == "clip" else noisy), clean
        if self.task.name == "jpeg":
            qualities = torch.randint(c.quality[0], c.quality[1] + 1, (n,), generator=self.host).tolist()
            if self.nvjpeg:
                y = jpeg_batch_cuda(clean_u8.to(self.device), qualities)
            else:
                y = jpeg_batch_u8(clean_u8, qualities, c.subsampling, self.pool)
            return y.to(self.device, non_blocking=True).float().div_(255.0), clean
        # inpaint: a mask from the bank, flipped/rotated at random
        dev = self.masks.device
        k = torch.randint(0, self.masks.shape[0], (n,), generator=self.g, device=self.g.device).to(dev)
        flags = torch.randint(0, 8, (n,), generator=self.g, device=self.g.device).to(dev).view(n, 1, 1, 1)
        m = self.masks[k]
        m = torch.where((flags & 1).bool(), m.transpose(-1, -2), m)
        m = torch.where((flags & 2).bool(), m.flip(-2), m)
        m = torch.where((flags & 4).bool(), m.flip(-1), m)
        self.last_mask = m
        return self.task.model_input(clean, m, self.task_params), clean

    def _noise_gen(self, clean: torch.Tensor) -> torch.Generator:
        if self.g.device == clean.device:
            return self.g
        # Photos too big for the GPU: the sampler's generator is on the CPU; noise is drawn on the GPU.
        if getattr(self, "_gen_on_device", None) is None:
            self._gen_on_device = torch.Generator(device=clean.device).manual_seed(
                derive_seed(self.c.seed, "noise-on-device"))
            if getattr(self, "resume_noise_state", None) is not None:  # checkpointed, so resume stays exact
                self._gen_on_device.set_state(self.resume_noise_state)
        return self._gen_on_device


# --------------------------------------------------------------------------- model helpers

class _CouplingDtype:
    """Undo handle of ``autocast_coupling_nets`` (``.remove()``, like a hook handle)."""

    def __init__(self, net) -> None:
        self.net = net

    def remove(self) -> None:
        self.net.autocast_dtype = None


def autocast_coupling_nets(model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> list:
    """Run each coupling network of an invertible model under autocast; everything else stays float32.

    The network's output is cast back to float32 before the coupling applies it; the state-dict
    keys are unchanged. Returns handles to ``.remove()`` to undo it.
    """
    from .model.flows import CouplingNet

    handles = []
    for m in model.modules():
        if isinstance(m, CouplingNet):
            m.autocast_dtype = dtype
            handles.append(_CouplingDtype(m))
    return handles


class EMA:
    """Exponential moving average of a model's parameters; buffers are copied, not averaged.

    Buffers (ActNorm ``initialized`` flags, spectral-norm vectors) are taken
    from the model whenever the state is read rather than every step: copying
    a few hundred tiny tensors per step would cost more kernel launches than
    the average itself.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = model
        params = dict(model.named_parameters())
        self.param_names = list(params)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.buffer_names = [k for k in self.state if k not in params]
        self._ema = [self.state[n] for n in self.param_names]
        self._src = [params[n].detach() for n in self.param_names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        if model is not self.model:
            raise ValueError("EMA.update must be given the model it was made from")
        torch._foreach_lerp_(self._ema, self._src, 1.0 - ema_decay_at(step, self.decay))

    @torch.no_grad()
    def state_dict(self) -> dict:
        buffers = dict(self.model.named_buffers())
        for k in self.buffer_names:
            self.state[k].copy_(buffers[k])
        return self.state

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.state.items():
            v.copy_(state[k])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- checkpoints

def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state -> (tensors named ``optim.<param>.<key>``, JSON-able rest), no pickle."""
    sd = opt.state_dict()
    tensors, extra = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = val
            else:
                extra[f"{pid}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "extra": extra}


def unflatten_optimizer(tensors: dict, rest: dict) -> dict:
    state: dict = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for name, val in rest.get("extra", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(path: Path, *, model: torch.nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer,
                    rng: dict, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_rest = flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "irae_version": __version__,
                "optimizer": json.dumps(opt_rest)}
    metadata.update({k: json.dumps(v, default=str) for k, v in meta.items()})
    _atomic_save(tensors, path, metadata)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint -> {"tensors": {...}, "meta": {decoded JSON fields}}; one-line errors on bad files."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise IraeError(f"{path}: checkpoint not found; give the .ckpt.safetensors file an earlier run wrote")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        from .weights import unreadable_safetensors

        raise IraeError(unreadable_safetensors(path, e, "checkpoint")) from None
    if raw.get("format") != CHECKPOINT_FORMAT:
        hint = " (that is a weights file; resume from the .ckpt.safetensors next to it)" \
            if raw.get("format") == "irae-weights" else ""
        raise IraeError(f"{path}: not an irae training checkpoint{hint}")
    meta = {}
    for k, v in raw.items():
        if k in ("format", "format_version", "irae_version"):
            meta[k] = v
        else:
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError as e:
                raise IraeError(f"{path}: checkpoint metadata field {k!r} is not valid JSON ({e.msg}); the file "
                                f"was damaged or edited -- resume from another checkpoint or start a new run") from None
    problem = _checkpoint_problem(tensors, meta)
    if problem:
        raise IraeError(f"{path}: unusable checkpoint: {problem}; the file was damaged or edited -- resume from "
                        f"another checkpoint or start a new run")
    return {"tensors": tensors, "meta": meta}


def _checkpoint_problem(tensors: dict, meta: dict) -> str | None:
    """What in a checkpoint would make --resume fail half-way (wrong fields, tensor shapes), or None."""
    from .model import config_from_dict, create_model

    kinds = {"config": dict, "model_config": dict, "step": int, "patches_seen": int, "train_seconds": (int, float),
             "run_id": str, "data": dict, "optimizer": dict}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"metadata field {key!r} is missing or of the wrong type"
    try:
        config = TrainConfig.from_dict(meta["config"])
        model = create_model(config_from_dict(meta["model_config"]))
    except (KeyError, ValueError, TypeError, AttributeError, IraeError) as e:
        return f"metadata fields 'config'/'model_config' do not describe a model ({str(e).splitlines()[0]})"
    expected = model.state_dict()
    for prefix in ("model.", "ema.") if config.ema > 0 else ("model.",):
        got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(got) != set(expected):
            missing = sorted(set(expected) - set(got))
            return f"the {prefix[:-1]} tensors do not match the {config.arch} model ({len(missing)} missing, " \
                   f"{len(set(got) - set(expected))} unexpected)"
        for k, v in expected.items():
            if tuple(got[k].shape) != tuple(v.shape):
                return f"tensor {prefix}{k} has shape {tuple(got[k].shape)}, the {config.arch} model needs " \
                       f"{tuple(v.shape)}"
    params = list(model.parameters())
    groups = meta["optimizer"].get("param_groups")
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
            and len(groups[0].get("params", [])) == len(params)):
        return "the optimizer state does not match the model's parameters"
    for name, t in tensors.items():
        if name.startswith("optim."):
            parts = name.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
                return f"optimizer tensor {name} belongs to no parameter of the model"
            if parts[2] in ("exp_avg", "exp_avg_sq") and tuple(t.shape) != tuple(params[int(parts[1])].shape):
                return f"optimizer tensor {name} has shape {tuple(t.shape)}, its parameter " \
                       f"{tuple(params[int(parts[1])].shape)}"
    torch_state = tensors.get("rng.torch")
    if torch_state is None or torch_state.dtype != torch.uint8 or torch_state.shape != torch.get_rng_state().shape:
        return "the random-generator state rng.torch is missing or malformed"
    return None


# --------------------------------------------------------------------------- validation

class Validator:
    """Held-out full-size images, degraded once with fixed seeds, scored with PSNR on uint8-rounded RGB.

    Seeds come from ``derive_seed(val_seed, relative path, level)``; ``val_seed``
    is independent of the training ``--seed`` so runs with different training
    seeds are validated on identical inputs.
    """

    def __init__(self, root: Path, task: Task, task_params: dict, *, crop: int, seed: int,
                 noise_protocol: str = "paper", subsampling: str = "4:2:0", echo=print) -> None:
        from .errors import ImageError
        from .imageio import read_image
        from .files import discover

        try:
            sources = discover(root, recursive=True)
        except FileNotFoundError:
            raise IraeError(f"--val {root}: no such folder") from None
        self.task, self.task_params = task, task_params
        self.levels = VAL_LEVELS[task.name]
        self.items: list[dict] = []
        for src in sources:
            try:
                x, _ = read_image(src.path)
            except ImageError as e:
                echo(f"irae: warning: {e}; left out of validation")
                continue
            x = _to_rgb_u8(x).float() / 255.0
            h, w = x.shape[-2:]
            ch, cw = min(h, crop), min(w, crop)
            top, left = (h - ch) // 2, (w - cw) // 2
            clean = x[:, top:top + ch, left:left + cw].contiguous()
            for level in self.levels:
                g = torch.Generator().manual_seed(derive_seed(seed, src.rel.as_posix(), level))
                mask = None
                if task.name == "denoise":
                    y = add_gaussian_noise(clean, float(level), g)
                    if noise_protocol == "clip":
                        y = quantize_u8(y)
                elif task.name == "jpeg":
                    y = jpeg_compress(clean, int(level), subsampling)
                else:
                    hole = task.train_defaults.get("hole_range", (0.05, 0.4))
                    mask = random_mask(str(level), ch, cw, g, tuple(hole))
                    y = clean
                self.items.append({"rel": src.rel.as_posix(), "level": level, "clean": clean, "degraded": y,
                                   "mask": mask})
        if not self.items:
            raise IraeError(f"--val {root}: no readable images found")
        self.images = len({it["rel"] for it in self.items})
        self.pixels = sum(it["clean"].shape[-1] * it["clean"].shape[-2] for it in self.items)
        self.input_psnr = self._score([self.task.model_input(it["degraded"][None],
                                                             None if it["mask"] is None else it["mask"][None],
                                                             task_params)[0] for it in self.items])

    @staticmethod
    def level_name(task: str, level) -> str:
        return {"denoise": f"sigma{level}", "jpeg": f"q{level}"}.get(task, str(level))

    def _score(self, outputs: list[torch.Tensor]) -> dict:
        from .metrics import mean_ignoring_inf, psnr

        per: dict = {}
        for it, out in zip(self.items, outputs):
            name = self.level_name(self.task.name, it["level"])
            entry = per.setdefault(name, {"psnr_rgb_u8": [], "psnr_hole_rgb_u8": []})
            entry["psnr_rgb_u8"].append(psnr(out, it["clean"]))
            if it["mask"] is not None:
                entry["psnr_hole_rgb_u8"].append(psnr(out, it["clean"], mask=it["mask"]))
        result = {}
        for name, entry in per.items():
            result[name] = {}
            for key, values in entry.items():
                if values:
                    finite = [v for v in values if not math.isnan(v)]
                    result[name][key] = round(mean_ignoring_inf(finite).mean, 4) if len(finite) == len(values) \
                        else float("nan")
        return result

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


def summarize_val(scores: dict | None) -> str:
    if not scores:
        return "-"
    return " ".join(f"{name} {v['psnr_rgb_u8']:.2f}" for name, v in scores.items())


# --------------------------------------------------------------------------- progress

class Reporter:
    """A rich progress bar on a terminal; plain lines (at most every 10 s) otherwise; nothing with -q."""

    def __init__(self, session: Session, total: int | None, start: int, enabled: bool) -> None:
        self.enabled = enabled and not session.quiet
        tty = sys.stderr.isatty()
        self.live = self.enabled and (session.progress if session.progress is not None else tty)
        self.progress = None
        self.last_line = 0.0
        self.fields = {"loss": "-", "speed": "-", "val": "-"}
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                                     TextColumn("val {task.fields[val]}"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=total, completed=start, **self.fields)

    def set_total(self, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, total=total)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step)

    def update(self, step: int, total: int | None, force: bool = False, **fields) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, **self.fields)
        elif self.enabled and (force or time.monotonic() - self.last_line >= 10):
            self.last_line = time.monotonic()
            of = f"/{total}" if total else ""
            print(f"step {step}{of}  loss {self.fields['loss']}  {self.fields['speed']}  val {self.fields['val']}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# --------------------------------------------------------------------------- distributed

def _broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers (ActNorm initialisation included) to every rank."""
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        if t.dtype == torch.bool:  # gloo cannot broadcast bool
            tmp = t.data.to(torch.uint8)
            dist.broadcast(tmp, 0)
            t.data.copy_(tmp.bool())
        else:
            dist.broadcast(t.data, 0)


# --------------------------------------------------------------------------- the run

@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    log: Path
    sha256: str | None
    steps: int
    steps_planned: int | None
    patches_seen: int
    minutes: float
    stopped: str
    val: dict | None
    device: str
    summary: dict


def derived_paths(session: Session) -> tuple[Path, Path, Path]:
    out = Path(session.out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    ckpt = Path(session.checkpoint) if session.checkpoint else out.with_name(f"{stem}.ckpt.safetensors")
    log = Path(session.log) if session.log else out.with_name(f"{stem}.log.json")
    if len({out.resolve(), ckpt.resolve(), log.resolve()}) < 3:
        raise IraeError(f"--out, --checkpoint and --log must be three different files ({out}, {ckpt}, {log})")
    return out, ckpt, log


def _run_id_of_weights(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("training", "{}")).get("run_id")
    except Exception:
        return None


def _run_id_of_log(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("run_id")
    except Exception:
        return None


def check_outputs(out: Path, ckpt: Path, log: Path, *, overwrite: bool, run_id: str | None,
                  resume: Path | None) -> dict | None:
    """Refuse to replace files this run does not own; returns the earlier log when resuming into it."""
    if out.is_dir():
        raise IraeError(f"--out {out}: is a folder; give a file name such as {out / 'model.safetensors'}")
    problems = []
    if out.exists() and not overwrite and not (run_id and _run_id_of_weights(out) == run_id):
        problems.append(str(out))
    if ckpt.exists() and not overwrite and not (resume and ckpt.resolve() == Path(resume).resolve()) \
            and not (run_id and _ckpt_run_id(ckpt) == run_id):
        problems.append(str(ckpt))
    earlier_log = None
    if log.exists():
        if run_id and _run_id_of_log(log) == run_id:
            earlier_log = json.loads(log.read_text())
        elif not overwrite:
            problems.append(str(log))
    if problems:
        hint = f"; to continue that run, add --resume {ckpt}" if str(ckpt) in problems and not resume else ""
        raise IraeError(f"{', '.join(problems)}: already exist(s); refusing to overwrite (use --overwrite, "
                        f"or another --out{hint})")
    return earlier_log


def check_output_space(out: Path, ckpt: Path, log: Path, config: TrainConfig, model_config: dict | None) -> None:
    """Before training: the output folders are writable and have room for the weights, checkpoint and log.

    Also removes what a killed earlier run left of these three files'
    temporary copies (``.NAME.tmp-PID`` of a process that is gone).
    """
    from .files import existing_ancestor, folder_problem, free_bytes, remove_stale_temp_files
    from .model import config_from_dict, create_model

    for path, what in ((out, "--out"), (ckpt, "--checkpoint"), (log, "--log")):
        problem = folder_problem(path.parent, f"{what} folder")
        if problem:
            raise IraeError(problem)
    pattern = re.compile("|".join(rf"\.(?P<name{i}>{re.escape(p.name)})\.tmp-(?P<pid{i}>\d+)"
                                  for i, p in enumerate((out, ckpt, log))), re.S)
    remove_stale_temp_files({p.parent for p in (out, ckpt, log) if p.parent.is_dir()}, pattern=pattern)
    model = create_model(config_from_dict(model_config) if model_config else config.arch)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Tensors only (metadata adds a few KB): weights = the model; checkpoint = model, EMA, Adam's two moments.
    needs = {out: state, ckpt: state * (2 if config.ema > 0 else 1) + 2 * params, log: 4096}
    by_fs: dict[int, list[Path]] = {}
    for path in needs:
        try:
            by_fs.setdefault(os.stat(existing_ancestor(path.parent)).st_dev, []).append(path)
        except OSError:
            continue
    for paths in by_fs.values():
        free = free_bytes(paths[0].parent)
        need = sum(needs[p] for p in paths)
        if free is not None and free < need:
            names = ", ".join(str(p) for p in paths)
            raise IraeError(f"{paths[0].parent}: only {_kib(free)} free, but {names} need{'s' * (len(paths) == 1)} "
                            f"about {_kib(need)}; free some space or choose another folder (nothing was trained)")


def _kib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


@contextmanager
def _save_attempt(path: Path, failures: dict, echo):
    """Write one output; on failure (disk full, ...) note it once, keep training/saving the rest, and go on."""
    from safetensors import SafetensorError

    from .errors import io_reason

    try:
        yield
        failures.pop(path, None)
    except (OSError, SafetensorError) as e:
        reason = io_reason(e)
        if failures.get(path) != reason:
            echo(f"irae: warning: {path}: cannot write ({reason}); the earlier copy, if any, is intact")
        failures[path] = reason


def _raise_save_failures(failures: dict, saved: list[Path], step: int) -> None:
    from .errors import SaveError

    failed = "; ".join(f"{p}: cannot write ({reason})" for p, reason in failures.items())
    kept = f"saved: {', '.join(map(str, saved))}" if saved else "nothing was saved"
    raise SaveError(f"{failed} -- {kept} (step {step}); free some space or choose another --out, then train again "
                    f"or --resume from an intact checkpoint")


def _ckpt_run_id(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("run_id", "null"))
    except Exception:
        return None


# How long and how often, not what is learned: what --resume lets change, and what it then means.
RESUME_MAY_CHANGE = {"steps": "the learning-rate schedule now runs over {} steps",
                     "inverse_gain_every": "the inverse gain is probed every {} steps from now on"}


def merge_resumed_config(saved: TrainConfig, given: dict, echo) -> TrainConfig:
    """A resumed run keeps its checkpoint's settings; --steps may change (the schedule then follows it)."""
    conflicts = []
    for key, value in given.items():
        if value is None or key in RESUME_MAY_CHANGE:
            continue
        have = getattr(saved, key)
        norm = tuple(value) if isinstance(value, list) else value
        if norm != have:
            conflicts.append(f"{key} {value!r} (checkpoint: {have!r})")
    if conflicts:
        raise IraeError("a resumed run keeps its checkpoint's settings; these differ: " + "; ".join(conflicts)
                        + ". Drop them, or start a new run without --resume")
    for key, effect in RESUME_MAY_CHANGE.items():
        value, had = given.get(key), getattr(saved, key)
        if value is not None and value != had:
            echo(f"irae: note: --{key.replace('_', '-')} {value} differs from the checkpoint's {had}; "
                 f"{effect.format(value)} (the run is an extension, not a replay)")
            saved = dataclasses.replace(saved, **{key: value})
            _validate(saved)
    return saved


def _default_echo(msg: str) -> None:
    from .errors import one_line

    print(one_line(msg), file=sys.stderr, flush=True)


def train(session: Session, given: dict | None = None) -> TrainResult:
    """Run (or resume) one training; ``given`` holds the TrainConfig fields the user set explicitly."""
    from .inference import Restorer, pick_dtype, strict_fp32
    from .model import config_from_dict, config_to_json, create_model
    from .weights import save_weights

    t_start = time.monotonic()
    given = dict(given or {})
    echo = session.echo or _default_echo
    device = train_device(session.device)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.cuda.set_device(device)
    dist_ctx = init_distributed(device)
    quiet_echo = echo if dist_ctx.main else (lambda msg: None)
    if session.out is None:
        raise IraeError("--out is required: the .safetensors file the trained weights go to")
    if session.minutes is not None and not session.minutes > 0:
        raise IraeError(f"--minutes must be positive, not {session.minutes}")

    ckpt_data = None
    if session.resume:
        ckpt_data = load_checkpoint(Path(session.resume))
        meta = ckpt_data["meta"]
        config = merge_resumed_config(TrainConfig.from_dict(meta["config"]), given, quiet_echo)
        run_id = meta["run_id"]
    else:
        config = build_config(given, device)
        run_id = uuid.uuid4().hex
        if config.steps is None and session.minutes is None:
            raise IraeError("give --steps N and/or --minutes M (the run needs an end)")
    task = get_task(config.task)
    task_params = task.default_task_params()
    out, ckpt_path, log_path = derived_paths(session)
    earlier_log = None
    if dist_ctx.main:  # only rank 0 writes, so only rank 0 asks (others would race with its first writes)
        earlier_log = check_outputs(out, ckpt_path, log_path, overwrite=session.overwrite,
                                    run_id=run_id if ckpt_data else None, resume=session.resume)
        check_output_space(out, ckpt_path, log_path, config, ckpt_data["meta"]["model_config"] if ckpt_data else None)
    if session.stop_at is not None and session.stop_at < 1:
        raise IraeError(f"--stop-at must be at least 1, not {session.stop_at}")
    init_state = init_from_record = None
    if ckpt_data:
        init_from_record = ckpt_data["meta"].get("init_from")
    elif config.init_from:  # checked before the photos load
        init_from_record, init_state = load_init_weights(config)

    # dtype: flows keep float32 arithmetic; only coupling nets (or the whole CNN) autocast
    if session.dtype not in ("auto", "fp32", "bf16"):
        raise IraeError(f"--dtype must be auto, fp32 or bf16 for training, not {session.dtype!r}")
    from .model import PRESETS

    compute_dtype = pick_dtype(session.dtype, device, coupling_only=PRESETS[config.arch].arch == "irae")
    if device.type == "cuda":
        strict_fp32()
        torch.backends.cudnn.benchmark = True

    # data (always on rank-local device)
    data_source = Path(session.data) if session.data else (Path(ckpt_data["meta"]["data"]["source"])
                                                           if ckpt_data else None)
    if data_source is None:
        raise IraeError("DATA is required: a folder of training photos or a .safetensors pack")
    data = load_training_data(data_source, config.patch, device, quiet_echo)
    if ckpt_data:
        before = ckpt_data["meta"]["data"]
        if (before.get("images"), before.get("megapixels")) != (data.description["images"],
                                                                data.description["megapixels"]):
            quiet_echo(f"irae: warning: DATA has {data.description['images']} images / "
                       f"{data.description['megapixels']} MP, the checkpoint was trained on {before.get('images')} / "
                       f"{before.get('megapixels')} MP; the run continues but is no longer a replay")

    data_gen = torch.Generator(device=data.device).manual_seed(derive_seed(config.seed, "data", dist_ctx.rank))
    host_gen = torch.Generator().manual_seed(derive_seed(config.seed, "host", dist_ctx.rank))
    torch.manual_seed(derive_seed(config.seed, "torch"))
    sampler = PatchSampler(data, config.patch, data_gen)
    degrader = Degrader(task, config, device, data_gen, host_gen, task_params)
    if degrader.nvjpeg_problem:
        quiet_echo(f"irae: note: nvJPEG is not usable here ({degrader.nvjpeg_problem}); the 4:4:4 JPEG "
                   f"degradation runs in Pillow on the CPU")

    # model, EMA, optimiser
    model = create_model(config.arch)
    if init_state is not None:
        model.load_state_dict(init_state)
    step = 0
    guard = DivergenceGuard()
    patches_seen = 0
    train_seconds = 0.0
    sessions = 1
    if ckpt_data:
        tensors, meta = ckpt_data["tensors"], ckpt_data["meta"]
        model = create_model(config_from_dict(meta["model_config"]))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if not getattr(model, "is_initialized", True):
            raise IraeError(f"{session.resume}: checkpoint holds an uninitialised model; start a fresh run")
        step = int(meta["step"])
        patches_seen = int(meta["patches_seen"])
        train_seconds = float(meta["train_seconds"])
        sessions = int(meta.get("sessions", 1)) + 1
        guard.load_state(meta.get("divergence_guard"))
    model.to(device).train()
    ema = EMA(model, config.ema) if config.ema > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_at(step, config),
                                 **({"fused": True} if device.type == "cuda" else {}))
    if ckpt_data:
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        _restore_rng(tensors, meta, data_gen, host_gen, dist_ctx, quiet_echo)
        degrader.resume_noise_state = tensors.get(f"rng.noise.rank{dist_ctx.rank}")
        if config.steps is None and session.minutes is None:
            raise IraeError(f"{session.resume}: the run's length was to be set by --minutes; give --minutes "
                            f"or --steps")
        if step >= (config.steps or math.inf):
            raise IraeError(f"{session.resume}: the run already completed its {config.steps} steps; "
                            f"give a larger --steps to extend it")

    # validation (rank 0 only): the EMA weights in a separate eval model
    validator = eval_model = restorer = None
    if session.val is not None and dist_ctx.main:
        validator = Validator(Path(session.val), task, task_params, crop=session.val_crop, seed=session.val_seed,
                              noise_protocol=config.noise_protocol, subsampling=config.subsampling, echo=echo)
        eval_model = create_model(config.arch)
        # Not folded: the eval model is reloaded with the EMA weights before every validation.
        restorer = Restorer(eval_model, task, task_params=task_params, device=device, dtype="fp32", folded=False)

    invertible = bool(getattr(model, "invertible", False))
    hooks: list = []
    whole_autocast = nullcontext
    if compute_dtype != torch.float32:
        if invertible:
            hooks = autocast_coupling_nets(model, device.type, compute_dtype)
        else:
            def whole_autocast():
                return torch.autocast(device_type=device.type, dtype=compute_dtype)

    train_model = model
    step_weights = batched_invconv_weights if invertible else (lambda m: nullcontext())
    if dist_ctx.active:
        from torch.nn.parallel import DistributedDataParallel

    def evaluate() -> dict | None:
        if validator is None:
            return None
        eval_model.load_state_dict(ema.state_dict() if ema is not None else model.state_dict())
        return validator(restorer)

    # log
    log = earlier_log or {"format": LOG_FORMAT, "run_id": run_id, "config": config.to_dict(),
                          "intervals": [], "val": [], "sessions": []}
    log["config"] = config.to_dict()
    log["sessions"].append({"started_step": step, "device": device_name(device), "dtype": str(compute_dtype),
                            "world_size": dist_ctx.world, "data": data.description,
                            "jpeg_engine": degrader.jpeg_engine, "torch": torch.__version__,
                            "irae": __version__, "argv": sys.argv[1:]})

    def rng_state() -> dict:
        """Generator states; under DDP every rank's, gathered (each rank draws its own patches)."""
        mine = {"data": data_gen.get_state(), "host": host_gen.get_state()}
        if getattr(degrader, "_gen_on_device", None) is not None:
            mine["noise"] = degrader._gen_on_device.get_state()
        state = {"torch": torch.get_rng_state()}
        if dist_ctx.active:
            import torch.distributed as dist

            everyone = [None] * dist_ctx.world
            dist.all_gather_object(everyone, mine)
            for r, states in enumerate(everyone):
                state.update({f"{k}.rank{r}": v for k, v in states.items()})
        else:
            state.update({f"{k}.rank0": v for k, v in mine.items()})
        return state

    save_failures: dict[Path, str] = {}  # files whose last write failed (disk full, ...): reported at the end

    def write_checkpoint() -> None:
        rng = rng_state()  # collective under DDP: every rank takes part
        if not dist_ctx.main:
            return
        with _save_attempt(ckpt_path, save_failures, quiet_echo):
            save_checkpoint(ckpt_path, model=model, ema=ema, optimizer=optimizer, rng=rng, meta={
                "config": config.to_dict(), "model_config": json.loads(config_to_json(model.config)),
                "step": step, "patches_seen": patches_seen,
                "train_seconds": train_seconds + (time.monotonic() - t_run),
                "run_id": run_id, "data": data.description, "world_size": dist_ctx.world, "sessions": sessions,
                "divergence_guard": guard.state(), "init_from": init_from_record,
                "task_params": task_params})

    def write_log() -> None:
        if dist_ctx.main:
            with _save_attempt(log_path, save_failures, quiet_echo):
                _atomic_write_text(log_path, json.dumps(log, indent=1, default=str) + "\n")

    log_every = session.log_every or (max(1, min(100, config.steps // 20)) if config.steps else 50)
    val_every = session.val_every if session.val_every is not None else DEFAULT_VAL_EVERY
    ckpt_every = session.checkpoint_every if session.checkpoint_every is not None else DEFAULT_CHECKPOINT_EVERY
    budget = session.minutes * 60 if session.minutes else None
    reporter = Reporter(session, config.steps, step, enabled=dist_ctx.main)
    last_val: dict | None = None
    last_val_seconds: float | None = None
    save_seconds = 1.0
    stopped = "completed"
    fresh = ckpt_data is None
    calib_t0 = None
    loss_sum = torch.zeros((), device=device)
    interval_steps, interval_t0 = 0, time.monotonic()
    t_run = time.monotonic()
    start_step = step
    param_list = list(model.parameters())

    def val_reserve(pixels_per_s: float) -> float:
        if validator is None or pixels_per_s <= 0:  # no speed measured yet: nothing to base a guess on
            return save_seconds
        if last_val_seconds is not None:
            return last_val_seconds + save_seconds
        # before the first validation: inference ~ a third of a training step per pixel
        return save_seconds + (validator.pixels / max(pixels_per_s, 1.0)) / 3

    pixels_per_s = 0.0
    initialized_here = False
    recalibrate: list[float] = []  # fractions of the budget still to set the schedule again at
    recal_step, recal_t0 = 0, 0.0

    def steps_that_fit(per_step: float, pixels_per_s: float) -> int:
        """Steps of ``per_step`` seconds left in the budget (3 % spare, final validation reserved)."""
        left = budget - (time.monotonic() - t_start) - val_reserve(pixels_per_s)
        return max(1, int(0.97 * left / per_step))

    def over_budget() -> bool:
        if budget is None:
            return False
        return time.monotonic() - t_start + val_reserve(pixels_per_s) >= budget

    try:
        while True:
            if config.steps is not None and step >= config.steps:
                stopped = "completed"
                break
            if session.stop_at is not None and step >= session.stop_at:
                stopped = "stop-at"
                break
            # Every session makes at least one step: a fresh run must initialise its model before saving it.
            if budget is not None and step > start_step and (not dist_ctx.active or step % log_every == 0):
                flag = over_budget()
                if dist_ctx.active:
                    import torch.distributed as dist

                    t = torch.tensor([1.0 if flag else 0.0], device=device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    flag = bool(t.item())
                if flag:
                    stopped = "time budget"
                    break

            clean_u8 = sampler.sample(config.batch_size)
            inp, clean = degrader(clean_u8)
            if fresh and step == 0 and not initialized_here:
                initialized_here = True
                # The one ActNorm initialisation, from the first batch, in float32 without hooks.
                for h in hooks:
                    h.remove()
                if dist_ctx.main and init_state is None:
                    model.initialize(inp, clean, start=config.init_start)
                if dist_ctx.active:
                    _broadcast_module(model)
                if compute_dtype != torch.float32 and invertible:
                    hooks = autocast_coupling_nets(model, device.type, compute_dtype)
                if ema is not None:
                    ema = EMA(model, config.ema)
                if dist_ctx.active:
                    train_model = DistributedDataParallel(
                        model, device_ids=[device.index] if device.type == "cuda" else None)
            elif dist_ctx.active and train_model is model:
                train_model = DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)

            lr = lr_at(step, config) * guard.lr_scale
            for group in optimizer.param_groups:
                group["lr"] = lr
            oom = diverged = False
            try:
                # the 1x1 weights of this step, built once (batched) for forward, probe and backward
                with step_weights(model):
                    with whole_autocast():
                        restored = train_model(inp)
                    loss = training_loss(restored, clean, degrader.last_mask if task.needs_mask else None)
                    diverged = _diverged(guard, loss, dist_ctx)
                    if not diverged:
                        guard.after_good_check(model, optimizer, ema)
                        objective = loss
                        if config.inverse_gain > 0 and invertible and step % config.inverse_gain_every == 0:
                            objective = loss + config.inverse_gain_every * inverse_gain_penalty(
                                model, restored, inp, config.inverse_gain, data_gen)
                        optimizer.zero_grad(set_to_none=True)
                        objective.backward()
            except torch.OutOfMemoryError:
                if dist_ctx.active or config.batch_size == 1:
                    raise IraeError(f"out of device memory at --batch-size {config.batch_size}"
                                    f"{' per process' if dist_ctx.active else ''}; lower --batch-size or --patch")
                oom = True  # handled below, once the traceback no longer holds the failed step's tensors
            if diverged:
                quiet_echo(guard.roll_back(model, optimizer, ema, step))
                log.setdefault("rollbacks", []).append({"step": step, "lr_scale": guard.lr_scale})
                continue
            if oom:
                # Halve the batch and redo the step; the smaller batch is kept for the rest of the run
                # (and in the checkpoint's config, so a resume does not fail the same way).
                optimizer.zero_grad(set_to_none=True)
                restored = loss = objective = inp = clean = clean_u8 = None
                _free_device_memory(device)
                halved = config.batch_size // 2
                quiet_echo(f"irae: note: out of device memory at step {step} with batch {config.batch_size}; "
                           f"batch halved to {halved} for the rest of the run")
                log["sessions"][-1].setdefault("oom_halvings", []).append(
                    {"step": step, "from": config.batch_size, "to": halved})
                config = dataclasses.replace(config, batch_size=halved)
                log["config"] = config.to_dict()
                continue
            if config.clip > 0:
                torch.nn.utils.clip_grad_norm_(param_list, config.clip)
            optimizer.step()
            if ema is not None:
                ema.update(model, step)
            loss_sum += loss.detach()
            step += 1
            patches_seen += config.batch_size * dist_ctx.world
            interval_steps += 1
            reporter.advance(step)

            if config.steps is None and step - start_step in CALIBRATION_STEPS:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step - start_step == CALIBRATION_STEPS[0]:
                    calib_t0 = time.monotonic()
                elif calib_t0 is not None:
                    per_step = (time.monotonic() - calib_t0) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
                    estimated = step + steps_that_fit(per_step, config.batch_size * config.patch ** 2 / per_step)
                    if dist_ctx.active:
                        import torch.distributed as dist

                        t = torch.tensor([float(estimated)], device=device)
                        dist.broadcast(t, 0)
                        estimated = int(t.item())
                    config = dataclasses.replace(config, steps=estimated)
                    log["config"] = config.to_dict()
                    reporter.set_total(estimated)
                    quiet_echo(f"irae: note: --minutes {session.minutes:g} alone: the schedule is set to "
                               f"{estimated} steps from the speed of the first ones")
                    recalibrate = list(RECALIBRATE_AT)
                    recal_step, recal_t0 = step, time.monotonic()

            # (one process only: ranks' clocks could disagree on when, and a collective needs all)
            if recalibrate and not dist_ctx.active and step > recal_step and (
                    step >= config.steps or (step % log_every == 0
                                             and time.monotonic() - t_start >= recalibrate[0] * budget)):
                now = time.monotonic()
                recalibrate = [f for f in recalibrate[1:] if now - t_start < f * budget]
                per_step = (now - recal_t0) / (step - recal_step)  # since the last estimate only
                estimated = step + steps_that_fit(per_step, pixels_per_s)
                recal_step, recal_t0 = step, now
                if abs(estimated - config.steps) > 0.02 * config.steps:
                    quiet_echo(f"irae: note: the schedule is set again to {estimated} steps (was "
                               f"{config.steps}) from the speed of the last ones")
                    config = dataclasses.replace(config, steps=estimated)
                    log["config"] = config.to_dict()
                    reporter.set_total(estimated)

            done = config.steps is not None and step >= config.steps
            if step % log_every == 0 or done or (session.stop_at is not None and step >= session.stop_at):
                if dist_ctx.active:
                    import torch.distributed as dist

                    dist.all_reduce(loss_sum)
                    loss_sum /= dist_ctx.world
                mean_loss = float(loss_sum.item()) / interval_steps  # the one host sync per interval
                now = time.monotonic()
                speed = interval_steps * config.batch_size * dist_ctx.world / max(now - interval_t0, 1e-9)
                pixels_per_s = speed * config.patch ** 2
                if not math.isfinite(mean_loss):
                    raise IraeError(f"training diverged at step {step} (loss {mean_loss}); the last checkpoint "
                                    f"{ckpt_path} is intact; lower --lr or --clip and start again")
                log["intervals"].append({"step": step, "loss": round(mean_loss, 6), "lr": lr,
                                         "patches_per_s": round(speed, 1),
                                         "elapsed_s": round(now - t_start, 2)})
                reporter.update(step, config.steps, loss=f"{mean_loss:.4f}", speed=f"{speed:,.0f} patches/s")
                write_log()
                loss_sum.zero_()
                interval_steps, interval_t0 = 0, time.monotonic()

            if validator is not None and val_every and step % val_every == 0 and not done:
                t_val = time.monotonic()
                last_val = evaluate()
                last_val_seconds = time.monotonic() - t_val
                log["val"].append({"step": step, "levels": last_val, "seconds": round(last_val_seconds, 2)})
                reporter.update(step, config.steps, force=True, val=summarize_val(last_val))
                write_log()
                interval_t0 += time.monotonic() - t_val
            if dist_ctx.active and val_every and step % val_every == 0 and not done:
                import torch.distributed as dist

                dist.barrier()
            if ckpt_every and step % ckpt_every == 0 and not done:
                t_save = time.monotonic()
                write_checkpoint()
                save_seconds = max(1.0, 2 * (time.monotonic() - t_save))
                interval_t0 += time.monotonic() - t_save
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        reporter.update(step, config.steps, force=True)
        reporter.close()
        degrader.close()
        for h in hooks:
            h.remove()

    if stopped == "interrupted" and step == 0 and not ckpt_data:
        raise KeyboardInterrupt  # nothing trained yet: writing no file beats writing an uninitialised one

    # the end: checkpoint, final validation, weights, log
    session_seconds = time.monotonic() - t_run
    write_checkpoint()
    result_summary = None
    final_val = None
    sha = None
    if dist_ctx.main:
        if validator is not None:
            t_val = time.monotonic()
            final_val = evaluate()
            log["val"].append({"step": step, "levels": final_val, "seconds": round(time.monotonic() - t_val, 2),
                               "final": True})
        total_seconds = train_seconds + session_seconds
        result_summary = {
            "run_id": run_id, "task": config.task, "arch": config.arch, "config": config.to_dict(),
            "model_config": json.loads(config_to_json(model.config)), "data": data.description,
            "steps": step, "steps_planned": config.steps, "patches_seen": patches_seen,
            "minutes": round(total_seconds / 60, 3), "device": device_name(device),
            "dtype": {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(compute_dtype, str(compute_dtype)),
            "world_size": dist_ctx.world, "val": final_val, "val_images": validator.images if validator else None,
            "val_seed": session.val_seed if validator else None, "val_crop": session.val_crop if validator else None,
            "degradation": config.degradation(), "seed": config.seed, "lr": config.lr,
            "ema": config.ema, "stopped": stopped, "sessions": sessions, "jpeg_engine": degrader.jpeg_engine,
            "oom_halvings": log["sessions"][-1].get("oom_halvings", []),
            "init_from": init_from_record,
            "torch": torch.__version__, "irae_version": __version__,
        }
        final = create_model(config.arch)
        final.load_state_dict(ema.state_dict() if ema is not None else model.state_dict())
        with _save_attempt(out, save_failures, quiet_echo):  # tried even when the (larger) checkpoint failed
            sha = save_weights(final, out, task=config.task, task_params=task_params, training=result_summary)
        log["summary"] = {**result_summary, "out": str(out), "sha256": sha}
        write_log()
    if dist_ctx.active:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if save_failures:
        _raise_save_failures(save_failures, [p for p in (out, ckpt_path, log_path) if p not in save_failures], step)
    if stopped == "interrupted":
        raise KeyboardInterrupt
    return TrainResult(out=out, checkpoint=ckpt_path, log=log_path, sha256=sha, steps=step,
                       steps_planned=config.steps, patches_seen=patches_seen,
                       minutes=(train_seconds + session_seconds) / 60, stopped=stopped, val=final_val,
                       device=device_name(device), summary=result_summary or {})


def training_loss(restored: torch.Tensor, clean: torch.Tensor, holes: torch.Tensor | None) -> torch.Tensor:
    """L1; for inpainting over the hole pixels only -- restore keeps every known pixel as it was,
    so what the model does there is never seen, and a whole-image loss would spend it on them."""
    if holes is None:
        return F.l1_loss(restored.float(), clean)
    weight = holes.to(clean.dtype)
    return ((restored.float() - clean).abs() * weight).sum() / (weight.sum() * clean.shape[1]).clamp_min(1.0)


def _diverged(guard: DivergenceGuard, loss: torch.Tensor, dist_ctx: Dist) -> bool:
    """The guard's verdict on this step's loss, the same on every rank (one host sync per step)."""
    value = loss.detach().float()
    if dist_ctx.active:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= dist_ctx.world
    return guard.is_bad(float(value.item()))


def _free_device_memory(device: torch.device) -> None:
    """Give cached blocks back to the device (after an ``except`` block: the failed step is gone by then)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _restore_rng(tensors: dict, meta: dict, data_gen: torch.Generator, host_gen: torch.Generator,
                 dist_ctx: Dist, echo) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    saved_world = int(meta.get("world_size", 1))
    if saved_world == dist_ctx.world:
        data_gen.set_state(tensors[f"rng.data.rank{dist_ctx.rank}"])
        host_gen.set_state(tensors[f"rng.host.rank{dist_ctx.rank}"])
        return
    # A different number of processes than the checkpoint had: fresh, distinct streams per rank.
    data_gen.manual_seed(derive_seed(int(meta["step"]), "resume-data", dist_ctx.rank))
    host_gen.manual_seed(derive_seed(int(meta["step"]), "resume-host", dist_ctx.rank))
    echo(f"irae: note: the checkpoint was written by {saved_world} process(es), this run has {dist_ctx.world}; "
         f"patch sampling continues from new random streams (the run is no longer a replay)")
