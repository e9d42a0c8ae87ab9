"""Which engine runs the restore model -- torch, or ONNX Runtime on the CPU -- and the ONNX Runtime runner.

``Restorer`` asks here once; everything around the model call (padding,
tiling, blending, self-ensemble, batching, the task's pre- and post-steps) is
the same for both.  ``auto`` takes ONNX Runtime on the CPU when it is installed
and the run does not ask for torch's bf16, fp16 or compiled path; torch
everywhere else.  On each CPU measured -- with AVX-512 BF16, with AMX --
ONNX Runtime fp32 ran 2-3x torch's eager fp32 and beat torch's eager bf16 path
too (docs/onnx.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import IraeError, io_reason, warn
from .onnx_extra import EXTRA_HINT, onnx_installed

BACKENDS = ("auto", "torch", "onnxruntime")
TORCH, ORT = "torch", "onnxruntime"
# What ``auto`` means on this machine, set once for every command (a site configuration, a cluster's
# job template, a test suite that compares against torch): torch or onnxruntime.
AUTO_ENV = "IRAE_BACKEND"


def check_backend(name: str, device: str = "auto", dtype: str = "auto", compile: str | bool = "auto") -> None:
    """Usage errors of ``--backend`` with the other options, before any work (torch is not imported)."""
    if name not in BACKENDS:
        raise IraeError(f"--backend {name!r}: use auto, torch or onnxruntime")
    if name != ORT:
        return
    if not onnx_installed():
        raise IraeError(f"--backend onnxruntime needs the onnx extra: {EXTRA_HINT}")
    if str(device) not in ("auto", "cpu"):
        raise IraeError(f"--backend onnxruntime runs on the CPU, not --device {device}; use --device cpu "
                        f"or --backend torch")
    if dtype not in ("auto", "fp32"):
        raise IraeError(f"--backend onnxruntime runs fp32, not --dtype {dtype}; use --dtype fp32 or auto, "
                        f"or --backend torch")
    if compile is True or compile == "on":
        raise IraeError("--compile is for the torch backend; leave it out with --backend onnxruntime")


def resolve_backend(name: str, device, dtype: str = "auto", compile: str | bool = "auto") -> str:
    """``torch`` or ``onnxruntime`` for ``--backend NAME`` on ``device`` (a torch.device)."""
    prefer = os.environ.get(AUTO_ENV) if name == "auto" else None
    if prefer not in (None, "", TORCH, ORT):
        raise IraeError(f"{AUTO_ENV}={prefer!r}: use torch or onnxruntime (or leave it unset)")
    check_backend(name, str(device) if name == ORT else "auto", dtype, compile)
    if name != "auto":
        return name
    if prefer == TORCH or device.type != "cpu" or dtype not in ("auto", "fp32") or compile is True or compile == "on":
        return TORCH
    if prefer == ORT:  # an explicit preference must be installed; plain auto falls back to torch quietly
        check_backend(ORT)
        return ORT
    return ORT if onnx_installed() else TORCH


class OnnxRunner:
    """An ONNX Runtime session (CPU) that takes and gives CPU float tensors, as the torch runner does."""

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch

        opts = ort.SessionOptions()
        # As many threads as torch uses: OMP_NUM_THREADS and torch.set_num_threads govern both backends.
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: its notes on graph rewrites are not the user's concern
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x, level=None):
        """``level``: a conditioned graph's (N,) noise levels (its second input), else None."""
        import torch

        from .onnx_export import INPUT, LEVEL, OUTPUT

        feeds = {INPUT: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        if level is not None:
            feeds[LEVEL] = level.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT], feeds)[0])


def onnx_runner(model, task: str, task_params: dict, source: dict | None) -> OnnxRunner:
    """A runner for ``model``: the cached export of its weights file (``source['sha256']``), else a new export
    (cached when there is a weights file).  Raises whatever the export raises."""
    from .onnx_export import EXPORT_VERSION, cache_dir, cached_path, export_onnx, store_in_cache

    sha = (source or {}).get("sha256")
    if sha and cached_path(sha).is_file():
        try:
            runner = OnnxRunner(cached_path(sha))
            if runner.metadata.get("source_sha256") == sha and runner.metadata.get("export_version") == EXPORT_VERSION:
                return runner
        except Exception:  # noqa: BLE001 - a damaged cached file is exported again and replaced
            pass
    data = export_onnx(model, task, task_params, source)
    if sha:
        try:
            store_in_cache(sha, data)
        except OSError as e:
            warn(f"cannot cache the ONNX export in {cache_dir()} ({io_reason(e)}); it is exported again next run")
    return OnnxRunner(data)


def onnx_runner_or_none(model, task: str, task_params: dict, source: dict | None) -> OnnxRunner | None:
    """``onnx_runner``, or None after one warning when the export or the session fails (torch runs instead)."""
    try:
        return onnx_runner(model, task, task_params, source)
    except Exception as e:  # noqa: BLE001 - any exporter or runtime failure leaves the torch path
        first = (str(e).splitlines() or [""])[0][:200]
        warn(f"ONNX export or ONNX Runtime failed ({type(e).__name__}: {first}); restoring with torch instead")
        return None
