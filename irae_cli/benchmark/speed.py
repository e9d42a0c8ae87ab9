"""``irae benchmark speed``: the model alone on random images, or a folder end to end (and a naive loop).

Timing follows one rule: warm-up runs first, the device is synchronised
around every timed run, and the report keeps every time plus median and p90.
:class:`ModelTimer` times the model call ``Restorer`` makes; :class:`FolderTimer`
times ``irae restore`` on a folder, files in to files out.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ImageError, IraeError
from ..files import discover, no_images_message
from ..backends import check_backend, resolve_backend
from ..inference import (LowPrecision, Restorer, casts_coupling_nets, compiled, device_and_dtype, pick_dtype,
                         restore_levels)
from ..model import condition_of, level_args, parameter_count
from ..model.condition import TYPICAL_LEVELS, stand_in_level
from ..onnx_export import export_source
from ..pixels import planes_from_u8, to_u8
from ..tasks import get_task
from .common import SPEED_SCHEMA
from ..environment import versions
from .models import LoadedModel, load_model, preset_model


def speed(*, arch: str | None = None, weights: str | None = None, size: int = 1024, batch_size: int = 4,
          dtype: str = "auto", device: str = "auto", compile: bool = False, repeats: int | None = None,
          warmup: int = 2, folder: str | Path | None = None, naive: bool = False,
          channels_last: bool = False, baseline: bool = False, workers: int = 0, backend: str = "auto",
          train: bool = False) -> dict:
    """Time one restore model; returns the ``irae.benchmark.speed/1`` dict.

    Without ``folder``: ``batch_size`` random images of ``size`` x ``size``
    through the model alone (``repeats`` default 10). With ``folder``: the
    whole restore path, files in to files out in a temporary folder (default 1
    repeat), and with ``naive`` also a plain per-image loop on the same files;
    ``workers`` is restore's ``--workers`` (I/O threads per pool, 0 = auto).  ``dtype`` and ``backend`` may be
    comma lists (model timing only): one row per backend and dtype, in that order, in the same process.
    With ``train``: training steps of ``batch_size`` patches of ``size``, eager and (with ``compile``)
    compiled (train_speed.py).
    """
    _check_speed_args(arch, weights, size, batch_size, warmup, repeats, naive, folder, workers)
    dtypes, backends = _check_settings(dtype, backend, device, compile, folder, channels_last,
                                       train and (weights is not None or folder is not None))
    lm = load_model(weights) if weights is not None else preset_model(arch or "paper-denoise")
    task = lm.task or "denoise"
    dev, dt = device_and_dtype("cpu" if backends == ["onnxruntime"] and device == "auto" else device, dtypes[0])
    for d in dtypes[1:]:
        pick_dtype(d, dev)  # an unknown name is a usage error before any timing
    model = lm.model
    params = parameter_count(model)
    multiple = int(model.size_multiple)
    mac = macs_per_pixel(model, model.config.channels, multiple)
    settings = {"arch": lm.arch, "weights": lm.weights, "task": task, "size": size, "batch_size": batch_size,
                "dtype": str(dt).replace("torch.", ""), "device": str(dev), "compile": compile,
                "channels_last": channels_last, "warmup": warmup, "folder": None if folder is None else str(folder),
                "naive": naive, "cpu_threads": torch.get_num_threads(), "backend": ",".join(backends)}
    notes: list[str] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if train:
        results = _train_runs(lm, settings, dev, dtype, repeats, warmup, compile)
    elif folder is None:
        settings["repeats"] = repeats = repeats or 10
        side = size + (-size) % multiple
        if side != size:
            notes.append(f"size {size} rounded up to {side}, a multiple of the model's size multiple {multiple}")
        settings["size"] = side
        results = _model_runs(lm, task, dev, notes, dtypes=dtypes, backends=backends, compile=compile,
                              channels_last=channels_last, baseline=baseline, side=side, batch_size=batch_size,
                              warmup=warmup, repeats=repeats)
        settings["compile"] = results[-1]["compile"]
        settings["dtype"] = ", ".join(dict.fromkeys(r["dtype"] for r in results if r["mode"] == "model"))
        settings["backend"] = ", ".join(dict.fromkeys(r["backend"] for r in results if r["mode"] == "model"))
    else:
        from ..restore.options import io_threads

        settings["repeats"] = repeats = repeats or 1
        settings["io_threads"] = io_threads(workers)
        results = FolderTimer(lm, Path(folder), task, dev, dtype, batch_size, notes, workers,
                              backend).run(warmup, repeats, naive)
    out_model = {**lm.entry(), "params": params, "mac_per_pixel": mac, "size_multiple": multiple}
    return {"schema": SPEED_SCHEMA, "settings": settings, "versions": versions(dev), "model": out_model,
            "results": results, "notes": notes}


def _check_settings(dtype: str, backend: str, device: str, compile: bool, folder, channels_last: bool,
                    train_misused: bool) -> tuple[list[str], list[str]]:
    """The --dtype and --backend lists, their usage errors raised before any work."""
    dtypes, backends = _listed(dtype, "--dtype"), _listed(backend, "--backend")
    if folder is not None and (len(dtypes) > 1 or len(backends) > 1):
        raise IraeError("--folder times one setting: give one --dtype and one --backend")
    if channels_last and "onnxruntime" in backends:
        raise IraeError("--channels-last is for the torch backend; leave it out with --backend onnxruntime")
    for b in backends:  # onnxruntime times the fp32 (or auto) entries of a --dtype list, and needs one
        fp32 = next((d for d in dtypes if d in ("auto", "fp32")), dtypes[0])
        check_backend(b, device if b == "onnxruntime" else "auto", fp32 if b == "onnxruntime" else "auto", compile)
    if train_misused:
        raise IraeError("--train times an untrained preset (--arch), not --weights or --folder")
    return dtypes, backends


def _train_runs(lm, settings: dict, dev, dtype: str, repeats, warmup: int, compile: bool) -> list[dict]:
    """Training steps of the preset, eager and (with ``compile``) compiled (train_speed.py)."""
    from .train_speed import train_speed

    settings.update(train=True, repeats=repeats or 10)
    results = train_speed(arch=lm.arch, patch=settings["size"], batch_size=settings["batch_size"], dtype=dtype,
                          dev=dev, steps=settings["repeats"], warmup=warmup, compile=compile,
                          time_calls=_time_calls, summary=_summary)
    settings["dtype"] = results[-1]["dtype"]
    return results


def _check_speed_args(arch, weights, size, batch_size, warmup, repeats, naive, folder, workers) -> None:
    if arch is not None and weights is not None:
        raise IraeError("give --arch or --weights, not both")
    if size < 16 or batch_size < 1 or warmup < 0 or (repeats is not None and repeats < 1):
        raise IraeError("--size must be >= 16, --batch-size and --repeats >= 1, --warmup >= 0")
    if naive and folder is None:
        raise IraeError("--naive compares against the end-to-end run; give --folder DIR as well")
    if workers < 0 or (workers and folder is None):
        raise IraeError("--workers sets the I/O threads of a --folder run: 0 (auto) or more, with --folder DIR")


def _listed(text: str, option: str) -> list[str]:
    names = list(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    if not names:
        raise IraeError(f"{option} {text!r} gives no value; give a name or a comma list")
    return names


def _model_runs(lm: LoadedModel, task: str, dev: torch.device, notes: list[str], *, dtypes: list[str],
                backends: list[str], compile: bool, channels_last: bool, baseline: bool, side: int, batch_size: int,
                warmup: int, repeats: int) -> list[dict]:
    """A model row per backend and dtype (one per setting they resolve to), after an eager fp32 unfolded
    baseline row when asked: same images, same process, so their ratios are the speed-ups."""
    runs = [("model", d, compile, True, b) for b in backends for d in dtypes
            if b != "onnxruntime" or d in ("auto", "fp32")]
    if baseline:
        runs.insert(0, ("baseline: eager fp32, unfolded", "fp32", False, False, "torch"))
    results, seen = [], set()
    for mode, run_dtype, run_compile, folded, backend in runs:
        timer = ModelTimer(lm, task, dev, run_dtype, run_compile, folded, channels_last, notes, backend)
        if (mode, timer.backend, timer.resolved, timer.compiled) in seen:
            continue  # e.g. onnxruntime at auto and at fp32: one setting, timed once
        seen.add((mode, timer.backend, timer.resolved, timer.compiled))
        times, n = timer.run(side, batch_size, warmup, repeats)
        results.append(_summary(mode, times, n, n * side * side / 1e6, dev, batch_size=n, backend=timer.backend,
                                dtype=timer.resolved, compile=timer.compiled, folded=folded))
    return results


# --------------------------------------------------------------------------- measuring

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
        model(x, *timing_level(model, 1, x.device))
    return counter.get_total_flops() / 2 / (side * side)


def timing_level(model: torch.nn.Module, n: int, device) -> tuple:
    """The level argument a timed call passes: none for a blind model, else a typical one (the time does
    not depend on it)."""
    condition = condition_of(model.config)
    return level_args(torch.full((n,), TYPICAL_LEVELS[condition]) if condition != "none" else None, device)


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
        return compiled(model, dynamic=False), None
    except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager, and is reported
        return model, f"torch.compile failed ({type(e).__name__}: {e}); timed eager"


# --------------------------------------------------------------------------- the model alone

class ModelTimer:
    """The restore path's model call (as ``Restorer`` builds it) timed on random images on ``dev``.

    ``resolved`` is the dtype the path resolved to (a folded IRAE runs only its
    coupling nets in it); ``compiled`` whether the timed calls were compiled,
    which a compile failure at the first call turns off.
    """

    def __init__(self, lm: LoadedModel, task: str, dev: torch.device, dtype: str, compile: bool, folded: bool,
                 channels_last: bool, notes: list[str], backend: str = "torch"):
        # The compile setting goes in only so the backend resolves as restore's would (--compile on means torch);
        # the timer compiles the runner itself, below.
        self.restorer = Restorer(lm.model, get_task(task), device=dev, dtype=dtype, tile=0, folded=folded,
                                 backend=backend, source=export_source(lm.sha256), compile="on" if compile else "off",
                                 task_params=get_task(task).params_for_weights(lm.task_params,
                                                                               lm.model.config.channels))
        self.backend = self.restorer.backend
        self.dev, self.channels, self.channels_last, self.notes = dev, lm.model.config.channels, channels_last, notes
        self.resolved = str(self.restorer.dtype).removeprefix("torch.")
        if self.restorer.precision.scope == "coupling nets":
            self.resolved += " (coupling nets)"
        self.run_model = self.restorer.runner
        if channels_last:
            self.run_model = self.run_model.to(memory_format=torch.channels_last)
        self.compiled = compile and self.backend == "torch"
        if self.compiled:
            self.run_model, note = _compile(self.run_model)
            if note:
                notes.append(note)

    def run(self, side: int, batch_size: int, warmup: int, repeats: int) -> tuple[list[float], int]:
        """Times at ``batch_size``, or at the largest halving of it that fits the device's memory."""
        n = batch_size
        while True:
            try:
                return self._timed(n, side, warmup, repeats), n
            except torch.OutOfMemoryError:
                if n == 1:
                    raise IraeError(f"out of device memory at batch 1 and {side}px; lower --size") from None
                compile_error = None
            except Exception as e:  # compile failures surface at the first call
                if not self.compiled:
                    raise
                compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            # Out here, the traceback no longer holds the failed call's tensors, so the retry can have their memory.
            n = self._fall_back(n, compile_error)

    def _fall_back(self, n: int, compile_error: str | None) -> int:
        """The one retry rule: a failed compile reruns eager at the same batch; out of memory halves it."""
        if compile_error is not None:
            self.notes.append(f"torch.compile failed at run time ({compile_error}); timed eager instead")
            self.compiled, self.run_model = False, self.restorer.eager
            return n
        n //= 2
        self.notes.append(f"out of memory: batch halved to {n}")
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        return n

    def _timed(self, n: int, side: int, warmup: int, repeats: int) -> list[float]:
        x = torch.rand(n, self.channels, side, side, generator=torch.Generator().manual_seed(0)).to(self.dev)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        run_model, restorer = self.run_model, self.restorer
        level = timing_level(restorer.model, n, self.dev)

        def call():
            with torch.inference_mode(), restorer.autocast():
                run_model(x, *level)
        breaks = _graph_breaks()
        times = _time_calls(call, self.dev, warmup, repeats)
        breaks = _graph_breaks() - breaks
        if self.compiled and breaks:
            self.notes.append(f"torch.compile was partial: {breaks} graph break(s); parts of the model ran eager")
        return times


# --------------------------------------------------------------------------- a folder, end to end

def _folder_sources(folder: Path, task: str) -> tuple[list, float]:
    """The images ``irae restore`` would walk in ``folder`` and their total megapixels."""
    from ..imageio import open_image

    if get_task(task).needs_mask:
        raise IraeError("end-to-end timing needs masks for inpainting weights; time a denoise or jpeg model")
    if not folder.is_dir():
        raise IraeError(f"{folder}: not a folder; --folder takes a folder of images")
    sources = discover(folder, recursive=True)  # as restore walks it
    if not sources:
        raise IraeError(no_images_message(folder))
    megapixels = 0.0
    for s in sources:
        try:
            # restore's own header read, so a file it would refuse (a decompression bomb) is refused here too
            with open_image(s.path, load=False) as img:
                megapixels += img.width * img.height / 1e6
        except ImageError as e:
            # a folder timed without some of its files would not be the figure asked for
            raise IraeError(f"{e}; nothing was timed: remove it from the timing folder") from None
    return sources, megapixels


class FolderTimer:
    """``irae restore``'s folder pipeline (files in, files out) timed, and optionally a naive loop beside it.

    Like for like: both runs write PNG at restore's default level, at the same precision.
    """

    def __init__(self, lm: LoadedModel, folder: Path, task: str, dev: torch.device, dtype: str, batch_size: int,
                 notes: list[str], workers: int = 0, backend: str = "auto"):
        self.sources, self.megapixels = _folder_sources(folder, task)
        self.backend = backend
        self.lm, self.folder, self.task, self.dev, self.dtype, self.batch_size, self.notes, self.workers = \
            lm, folder, task, dev, dtype, batch_size, notes, workers

    def run(self, warmup: int, repeats: int, naive: bool) -> list[dict]:
        from ..restore import RestoreOptions
        from ..weights import save_weights

        with tempfile.TemporaryDirectory(prefix="irae-bench-") as tmp:
            tmp = Path(tmp)
            weights = self.lm.weights
            if weights is None:  # an untrained preset goes through the same file path as real weights
                weights = str(tmp / f"{self.lm.arch}.safetensors")
                save_weights(self.lm.model, weights, task=self.task)
            opts = RestoreOptions(task=self.task, weights=weights, device=str(self.dev), dtype=self.dtype,
                                  batch_size=self.batch_size, workers=self.workers, format="png",
                                  backend=self.backend)
            # As restore resolves it (the model's low-precision rule); ONNX Runtime runs fp32.
            backend = resolve_backend(self.backend, self.dev, self.dtype)
            dt = torch.float32 if backend == "onnxruntime" else pick_dtype(
                self.dtype, self.dev, coupling_only=casts_coupling_nets(self.lm.model))
            scope = LowPrecision(self.lm.model, self.dev, dt).scope
            precision = {"backend": backend, "dtype": str(dt).replace("torch.", ""), "low_precision_scope": scope,
                         "conv_tf32": _conv_tf32(self.dev), "output": f"PNG level {opts.png_level}"}
            out = [self._end_to_end(tmp, opts, warmup, repeats, precision)]
            if naive:
                out.append(self._naive(tmp, dt, opts.png_level, repeats, precision))
        return out

    def _end_to_end(self, tmp: Path, opts, warmup: int, repeats: int, precision: dict) -> dict:
        from ..restore import restore

        # Warm-up on the first file: CUDA context, kernels and allocator are process-wide, so later runs start warm.
        for w in range(warmup):
            restore(self.sources[0].path, tmp / f"warm-{w}", opts, quiet=True)
        times = []
        for r in range(repeats):
            _sync(self.dev)
            t0 = time.perf_counter()
            summary = restore(self.folder, tmp / f"e2e-{r}", opts, quiet=True)
            _sync(self.dev)
            times.append(time.perf_counter() - t0)
            if summary.failed:
                self.notes.append(f"end-to-end run {r + 1}: {summary.failed} file(s) failed")
        return _summary("end-to-end", times, len(self.sources), self.megapixels, self.dev, **precision,
                        pipeline=f"irae restore pipeline (PNG level {opts.png_level}, weights load included)")

    def _naive(self, tmp: Path, dt: torch.dtype, png_level: int, repeats: int, precision: dict) -> dict:
        model = self.lm.model.to(self.dev).float().eval()
        times = []
        for r in range(repeats):
            dest = tmp / f"naive-{r}"
            dest.mkdir()
            _sync(self.dev)
            t0 = time.perf_counter()
            _naive_loop(self.sources, dest, model, self.dev, dt, png_level)
            _sync(self.dev)
            times.append(time.perf_counter() - t0)
        return _summary("naive", times, len(self.sources), self.megapixels, self.dev,
                        **{**precision, "backend": "torch"},
                        pipeline=f"Pillow read, one image at a time, eager, {precision['dtype']}, "
                                 f"Pillow PNG write (level {png_level})")


def _conv_tf32(dev: torch.device) -> bool | None:
    """Whether fp32 convolutions run as TF32 on this device (None off CUDA)."""
    if dev.type != "cuda":
        return None
    try:
        return torch.backends.cudnn.conv.fp32_precision == "tf32"
    except AttributeError:  # torch before the fp32_precision API
        return bool(torch.backends.cudnn.allow_tf32)


def _naive_loop(sources, dest: Path, model: torch.nn.Module, dev: torch.device, dt: torch.dtype = torch.float32,
                png_level: int = 1) -> None:
    """The plain loop: Pillow read, the unfolded model on one image, Pillow PNG write; at ``dt`` with
    restore's scope (``LowPrecision``: an IRAE's coupling nets only, else the whole model)."""
    from PIL import Image

    from ..imageio import open_image

    precision = LowPrecision(model, dev, dt).attach()
    try:
        for s in sources:
            with open_image(s.path, load=False) as img:
                x = torch.from_numpy(planes_from_u8(np.asarray(img.convert("RGB"))))[None]
            # as restore does, per image (a JPEG quality, which restore reads from a file, at a typical one)
            levels = restore_levels(model.config, x, stand_in_level(model.config))
            level = level_args(levels, dev)
            x = x.to(dev)
            with torch.inference_mode(), precision.autocast():
                y = to_u8(model(x, *level).float()[0])
            Image.fromarray(y, "RGB").save(dest / (s.path.stem + ".png"), compress_level=png_level)
    finally:
        precision.detach()
