"""Running a restoration model on images: device, dtype, tiling with seam-free blending, OOM retry.

``Restorer`` is the one inference path: ``irae restore`` streams files through
it and ``irae benchmark`` measures it.  It is file-agnostic: images go in as
float tensors in [0, 1] on the CPU and come back the same way; only tiles of
at most ``tile`` x ``tile`` pixels are ever on the device.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch

from . import environment
from .defaults import check_compile_mode
from .errors import IraeError
from .model import condition_of, conditioned, level_args, model_info
from .model.condition import restore_levels  # noqa: F401 - the one home of the levels; callers import it here
from .model.config import COUPLING_NETS
from .model.flows import CouplingNet
from .model.folded import FoldedIRAE, fold
from .model.irae import pad_to_multiple
from .tasks import Task

AUTO_TILE = 1024
MIN_TILE = 64
AUTO_OVERLAP = 32  # --tile-overlap when not given: this, or a quarter of a smaller tile
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# --compile auto compiles once the first batch shows that the rest of the run would take longer
# than this eagerly: compiling costs ~40-80 s on a CPU, so a short run is faster without it.
COMPILE_PAYOFF_S = 120.0


class _NoToolkitGuess(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." lines: compiling for the CPU needs no
    GPU toolkit, and the guess reads like a fault to whoever sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("No CUDA runtime is found", "No ROCm runtime is found"))


_NO_TOOLKIT_GUESS = _NoToolkitGuess()


def compiled(fn, dynamic: bool | None = None, **options):
    """``torch.compile(fn)``, the one way restore, train and the speed benchmark compile."""
    logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_TOOLKIT_GUESS)
    return torch.compile(fn, dynamic=dynamic, **options)


def strict_fp32() -> None:
    """Turn TF32 off: fp32 must mean IEEE fp32 (TF32 convolutions cost the flows ~1e-3 of round trip)."""
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    except AttributeError:  # torch before the fp32_precision API
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise IraeError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise IraeError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise IraeError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise IraeError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def pick_dtype(name: str, device: torch.device, *, coupling_only: bool = False) -> torch.dtype:
    """'auto': bf16 on GPUs that support it; on the CPU only for an IRAE flow whose coupling nets
    alone run in bf16 (``coupling_only``), and only where the CPU computes bf16 natively (AVX-512
    BF16 or AMX).  Whole networks in bf16 lose more than 0.05 dB on the CPU's auto path, and
    emulated bf16 is slower, not faster."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and coupling_only and environment.cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise IraeError(f"unknown dtype {name!r}; use auto, fp32, bf16 or fp16")
    if name == "fp16" and device.type == "cpu":
        raise IraeError("fp16 is not supported on the CPU; use --dtype fp32 or bf16")
    return DTYPES[name]


def device_and_dtype(device: str | torch.device = "auto", dtype: str = "auto", *, coupling_only: bool = False,
                     strict: bool | None = None) -> tuple[torch.device, torch.dtype]:
    """The one device and precision policy of restore, train and benchmark.

    ``strict`` turns TF32 off on CUDA (default: when the compute dtype is fp32).
    Training and the invertibility check always want it: the flows' own
    arithmetic is fp32 even where the coupling nets run in bf16, and TF32 there
    costs the round trip ~1e-3.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = pick_dtype(dtype, dev, coupling_only=coupling_only)
    if dev.type == "cuda" and (dt == torch.float32 if strict is None else strict):
        strict_fp32()
    return dev, dt


def casts_coupling_nets(model_or_config) -> bool:
    """Whether a model (or config, or preset name) runs only its coupling nets in bf16/fp16: the rule of
    ``ModelInfo.low_precision``, read here for restore, train and both benchmarks alike."""
    config = getattr(model_or_config, "config", model_or_config)
    return model_info(config).low_precision == COUPLING_NETS


class LowPrecision:
    """Where ``model`` leaves float32 at ``dtype``, by its ``ModelInfo.low_precision`` rule.

    For an IRAE only the coupling nets are cast (``attach``): a folded flow's coupling weights are cast
    in place (they stay so: fold afresh for another dtype), a factored flow's nets run under their own
    autocast (``CouplingNet.autocast_dtype``) with their output back in float32.  Any other model runs
    under ``autocast()`` as a whole.  At float32 (or float64) nothing changes.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.coupling_nets = casts_coupling_nets(model)
        self.low = dtype in (torch.bfloat16, torch.float16)

    @property
    def label(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, str(self.dtype))

    @property
    def scope(self) -> str | None:
        """What runs in low precision, in words (None at full precision)."""
        if not self.low:
            return None
        return "coupling nets" if self.coupling_nets else "whole model"

    def attach(self) -> "LowPrecision":
        if isinstance(self.model, FoldedIRAE):
            if self.low:
                self.model.set_coupling_dtype(self.dtype)
        else:
            # Set at every attach, fp32 included: a model timed at several dtypes keeps no earlier one.
            self._set_nets(self.dtype if self.low and self.coupling_nets else None)
        return self

    def detach(self) -> None:
        """Back to float32 everywhere (the ActNorm initialisation, the end of a training run)."""
        if isinstance(self.model, FoldedIRAE):
            raise ValueError("a folded model's coupling weights stay cast; fold the model afresh instead")
        self._set_nets(None)

    def _set_nets(self, dtype: torch.dtype | None) -> None:
        for m in self.model.modules():
            if isinstance(m, CouplingNet):
                m.autocast_dtype = dtype

    def autocast(self):
        """The context a call of the model runs in: autocast for a model cast as a whole, else nothing."""
        if self.low and not self.coupling_nets:
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def fp32_coupling_nets(self):
        """The factored coupling nets back in float32 within: a fine inverse-gain probe measures changes of
        ~1e-5, which bf16 (8 bits of mantissa) rounds away."""
        if not (self.low and self.coupling_nets) or isinstance(self.model, FoldedIRAE):
            yield
            return
        self._set_nets(None)
        try:
            yield
        finally:
            self._set_nets(self.dtype)


def low_precision(model: torch.nn.Module, device: str | torch.device = "auto", dtype: str = "auto", *,
                  strict: bool | None = None) -> LowPrecision:
    """``--dtype`` resolved for ``model`` on ``device`` (``device_and_dtype``) and attached by its rule."""
    dev, dt = device_and_dtype(device, dtype, coupling_only=casts_coupling_nets(model), strict=strict)
    return LowPrecision(model, dev, dt).attach()


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering [0, size); the last one ends at ``size``."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def blend_ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D weights rising linearly across the overlap on sides that border another tile."""
    w = torch.ones(length, dtype=torch.float32)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if ramp_start:
            w[:overlap] = torch.minimum(w[:overlap], ramp)
        if ramp_end:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
    return w


# The 8 flips and quarter turns of the square: (quarter turns, mirror).  Averaging a model's restorations of
# all 8 (self-ensemble, as EDSR+ and KAIR's x8) gains what the model lacks in symmetry, at 8x the time.
DIHEDRAL = tuple((k, mirror) for k in range(4) for mirror in (False, True))


def dihedral(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    y = torch.rot90(x, k, (-2, -1))
    return y.flip(-1) if mirror else y


def undo_dihedral(y: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    return torch.rot90(y.flip(-1) if mirror else y, -k, (-2, -1))


@dataclass
class RunStats:
    tiles: int = 0
    oom_retries: int = 0
    notes: list[str] = field(default_factory=list)


class Restorer:
    """A model plus how to run it: ``restorer(images, masks) -> restored images``.

    ``backend`` (``irae_cli.backends``) picks torch or ONNX Runtime for the model call alone; ``source`` is what
    an exported ONNX file records of the weights (sha256, preset), and its sha256 keys the export cache.
    """

    def __init__(self, model: torch.nn.Module, task: Task, *, task_params: dict | None = None,
                 device: str | torch.device = "auto", dtype: str = "auto", tile: int | str = "auto",
                 tile_overlap: int | None = None, batch_size: int = 4, compile: str = "off",
                 workload_megapixels: float | None = None, folded: bool = True, self_ensemble: bool = False,
                 backend: str = "torch", source: dict | None = None) -> None:
        from .backends import ORT, resolve_backend

        if backend == ORT and device == "auto":
            device = "cpu"  # ONNX Runtime runs here on the CPU whatever GPU there is
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.task = task
        self.task_params = (task_params if task_params is not None
                            else task.default_task_params(int(model.config.channels)))
        self.model = model.eval().to(self.device)
        # The folded form restores what the model does to fp32 rounding, in fewer kernels.
        self.runner = self.eager = fold(self.model).to(self.device) if folded else self.model
        self.compile = check_compile_mode(compile)
        self.backend = resolve_backend(backend, self.device, dtype, self.compile) if folded else "torch"
        if self.backend == ORT:
            dtype, self.compile = "fp32", "off"  # its runner is made last, once the options are known to be good
        # An IRAE runs only its coupling nets in bf16/fp16, folded or not (whole-model bf16 cost
        # 0.04-0.10 dB on the validation photos, coupling-only < 0.01 dB).
        self.precision = low_precision(self.runner, self.device, dtype)
        self.dtype = self.precision.dtype
        # Self-ensemble: the mean of the restorations of the 8 flips and turns of each image (DIHEDRAL).  The
        # result is no longer the flow's image of its input, so it has no exact inverse.
        self.views = DIHEDRAL if self_ensemble else DIHEDRAL[:1]  # (0, False): the image as it is
        self.workload = None if workload_megapixels is None else workload_megapixels * len(self.views)
        self.done_megapixels = 0.0
        self.compiled = False
        self.multiple = int(model.size_multiple)
        self.channels = int(model.config.channels)
        if tile == "auto":
            tile = AUTO_TILE
        tile = int(tile)
        if tile < 0:
            raise IraeError(f"--tile must be auto, 0 (whole image) or a size >= {MIN_TILE}, not {tile}")
        if 0 < tile < MIN_TILE:
            raise IraeError(f"--tile {tile} is too small; use at least {MIN_TILE}")
        self.tile = tile - tile % self.multiple if tile else 0
        given_overlap = tile_overlap is not None
        if not given_overlap:  # the default adapts, so every --tile from MIN_TILE up works without it
            tile_overlap = min(AUTO_OVERLAP, self.tile // 4) if self.tile else AUTO_OVERLAP
        if tile_overlap < 0:
            raise IraeError(f"--tile-overlap {tile_overlap} must be >= 0")
        # Rounded up to the size multiple so every tile starts on the model's squeeze grid.
        self.overlap = -(-tile_overlap // self.multiple) * self.multiple
        if self.tile and 2 * self.overlap >= self.tile:
            if not given_overlap:
                self.overlap = (self.tile // 4) // self.multiple * self.multiple
            else:
                raise IraeError(f"--tile-overlap {tile_overlap} must be less than half of --tile {tile}; "
                                f"lower it or leave it out (default: {AUTO_OVERLAP}, or a quarter of a smaller tile)")
        self.batch_size = max(1, int(batch_size))
        self.stats = RunStats()
        if self.backend == ORT:
            self.runner = self.eager = self._onnx_runner(source)

    def _onnx_runner(self, source: dict | None):
        """The ONNX Runtime runner, or (after one warning) the folded torch model when the export fails."""
        from .backends import onnx_runner_or_none

        runner = onnx_runner_or_none(self.model, self.task.name, self.task_params, source)
        if runner is None:
            self.backend = "torch"
            return self.runner
        return runner

    def autocast(self):
        """The context a call of ``runner`` needs (``LowPrecision.autocast``)."""
        return self.precision.autocast()

    def _free_device_memory(self) -> None:
        """Return cached blocks to the device; call it after an ``except`` block, when the failed attempt is gone."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _maybe_compile(self, seconds: float, megapixels: float) -> None:
        """Decide --compile once: 'on' at the first call, 'auto' after timing the first eager call."""
        if self.compiled or self.compile == "off":
            return
        if self.compile == "auto":
            if self.workload is None or megapixels <= 0:
                self.compile = "off"
                return
            rest = max(0.0, self.workload - self.done_megapixels) * seconds / megapixels
            if rest < COMPILE_PAYOFF_S:
                self.compile = "off"
                return
        try:
            self.runner = compiled(self.runner)
            self.compiled = True
        except Exception as e:  # noqa: BLE001 - a backend that cannot compile leaves the eager path
            self.stats.notes.append(f"torch.compile unavailable ({type(e).__name__}); ran eager")
            self.compile = "off"

    def _call(self, part: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        if self.compile == "on" and not self.compiled:
            self._maybe_compile(0.0, 0.0)
        eager_probe = self.compile == "auto" and not self.compiled
        t0 = time.perf_counter()
        try:
            with torch.inference_mode(), self.autocast():
                y = self.runner(part.to(self.device, non_blocking=True), *level_args(levels, self.device)).float()
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - compile errors surface at the first compiled call
            if not self.compiled:
                raise
            self.stats.notes.append(f"torch.compile failed at run time ({type(e).__name__}); ran eager")
            self.runner, self.compiled, self.compile = self.eager, False, "off"
            return self._call(part, levels)
        y = y.to("cpu")
        megapixels = part.shape[0] * part.shape[-2] * part.shape[-1] / 1e6
        self.done_megapixels += megapixels
        if eager_probe:
            self._maybe_compile(time.perf_counter() - t0, megapixels)
        return y

    def _run_model(self, x: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, h, w) on CPU -> restored (N, C, h, w) float32 on CPU, halving the batch on CUDA OOM;
        ``levels``: the (N,) noise levels of a conditioned model's rows.

        A halved batch is kept for the rest of the run (``self.batch_size``): under memory
        pressure every later batch would otherwise repeat the same failing attempts.
        """
        n = x.shape[0]
        chunk = min(n, self.batch_size)
        out = []
        i = 0
        while i < n:
            part = x[i:i + chunk]
            oom = False
            try:
                out.append(self._call(part, None if levels is None else levels[i:i + chunk]))
                i += chunk
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                oom = True  # handled below: the traceback holds the failed attempt's tensors until here
            if oom:
                chunk = max(1, chunk // 2)
                self.batch_size = min(self.batch_size, chunk)
                self.stats.oom_retries += 1
                self.stats.notes.append(f"out of memory: batch halved to {chunk} (kept for the rest of the run)")
                self._free_device_memory()
        return torch.cat(out)

    def _adapt_channels(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.channels:
            return x
        if x.shape[1] == 1 and self.channels == 3:
            return x.expand(-1, 3, -1, -1)
        raise IraeError(f"model takes {self.channels} channels, image has {x.shape[1]}")

    def _restore_same_size(self, x: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) model input of one size -> restored, tiled when larger than a tile.

        The image is padded to the model's size multiple first and every tile starts on
        that grid, so a tile is squeezed exactly as the whole image would be: the result
        does not depend on the tile size (up to the blending of the overlaps).
        """
        h0, w0 = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.multiple)
        return self._restore_padded(x, levels)[..., :h0, :w0]

    def _restore_padded(self, x: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        tile = self.tile
        while True:
            try:
                if tile and (h > tile or w > tile):
                    return self._restore_tiled(x, tile, levels)
                return self._run_model(x, levels)
            except torch.OutOfMemoryError:
                new_tile = (tile or max(h, w)) // 2
                new_tile -= new_tile % self.multiple
                if new_tile < max(MIN_TILE, 2 * self.overlap + self.multiple):
                    raise IraeError(f"out of device memory even with {tile}px tiles; use --device cpu") from None
            # The tile that failed is not tried again on later images (kept for the rest of the run).
            self.stats.oom_retries += 1
            self.stats.notes.append(f"out of memory: tile halved to {new_tile} (kept for the rest of the run)")
            tile = self.tile = new_tile
            self._free_device_memory()

    def _restore_tiled(self, x: torch.Tensor, tile: int, levels: torch.Tensor | None) -> torch.Tensor:
        """Tiles go through the model a batch at a time and are blended into the result at once: only the
        image, the result and its blend weights are ever whole in memory, never every tile at once."""
        n, c, h, w = x.shape
        th, tw = min(tile, h), min(tile, w)
        overlap = self.overlap
        boxes = [(y, x0) for y in tile_starts(h, th, overlap) for x0 in tile_starts(w, tw, overlap)]
        out = torch.zeros(n, c, h, w)
        weight = torch.zeros(1, 1, h, w)
        # Every (tile, image) pair has one shape, so pairs from different tiles batch together.
        pairs = [(k, i) for k in range(len(boxes)) for i in range(n)]
        start = 0
        while start < len(pairs):
            chunk = pairs[start:start + self.batch_size]  # _run_model may lower batch_size on OOM
            crops = torch.stack([x[i, :, boxes[k][0]:boxes[k][0] + th, boxes[k][1]:boxes[k][1] + tw]
                                 for k, i in chunk])
            restored = self._run_model(crops, None if levels is None else levels[[i for _, i in chunk]])
            for (k, i), yk in zip(chunk, restored):
                y, x0 = boxes[k]
                wt = blend_ramp(th, overlap, y > 0, y + th < h)[:, None] * blend_ramp(tw, overlap, x0 > 0,
                                                                                    x0 + tw < w)[None, :]
                out[i, :, y:y + th, x0:x0 + tw] += yk * wt
                if i == 0:
                    weight[0, 0, y:y + th, x0:x0 + tw] += wt
            start += len(chunk)
        self.stats.tiles += len(pairs)
        return out.div_(weight)

    @property
    def conditioned(self) -> bool:
        """Whether the model needs each image's level: noise sigma or JPEG quality (``model/condition.py``)."""
        return conditioned(self.model.config)

    @property
    def needs_given_level(self) -> bool:
        """Whether the model's level must be given: the JPEG quality, which callers read per file."""
        return condition_of(self.model.config) == "quality"

    def levels_for(self, images: torch.Tensor, given: float | None = None) -> torch.Tensor | None:
        """The (N,) noise levels this model restores ``images`` at (``restore_levels``)."""
        return restore_levels(self.model.config, images, given)

    def _ensemble(self, x: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
        """The mean of the restorations of every view.  The image is padded to the task's grid first (JPEG's
        16-pixel blocks): a flip of a width off that grid would move the block edges to where the model never
        saw them, and cost more than the views gain."""
        h0, w0 = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.task.grid)
        y = sum(undo_dihedral(self._restore_same_size(dihedral(x, k, mirror), levels), k, mirror)
                for k, mirror in self.views) / len(self.views)
        return y[..., :h0, :w0]

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                 levels: torch.Tensor | None = None) -> torch.Tensor:
        """Restore a batch (N, C, H, W) of equal-sized images in [0, 1]; returns float32 on the CPU.
        ``levels``: a conditioned model's (N,) levels (sigma on the 0-255 scale, or JPEG quality); a
        sigma left out is estimated."""
        images = images.float().cpu()
        if self.conditioned and levels is None:
            levels = self.levels_for(images)
        elif levels is not None:
            levels = torch.as_tensor(levels, dtype=torch.float32).reshape(-1).expand(images.shape[0])
        x = self._adapt_channels(self.task.model_input(images, masks, self.task_params))
        y = self._restore_same_size(x, levels) if len(self.views) == 1 else self._ensemble(x, levels)
        y = self.task.model_output(y, self.task_params)
        if images.shape[1] == 1 and y.shape[1] == 3:
            y = y.mean(dim=1, keepdim=True)
        return self.task.finish(y, images, masks, owned=True)  # y is this call's own: clamped in place
