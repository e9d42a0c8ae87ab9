"""The ONNX file of a restore model: what its graph takes and gives, its metadata, and the export cache.

The graph is the folded restore direction (``irae_cli.model.folded``) and
nothing around it, so the rules irae applies before and after the model stay
in ``Task`` and ``Restorer`` and hold for both backends alike:

* input ``image``, output ``restored``: float32 NCHW in [0, 1], dynamic batch,
  height and width; height and width must be multiples of ``size_multiple``
  (pad first, e.g. by reflection, and crop the result); the output is not
  clamped;
* the channels are the model's (``channels``): a grey image is given as RGB;
* an inpainting model takes its input pre-filled (``Task.model_input``: holes
  filled, then for a mask-channel model the mask as a 4th channel, 1 = missing)
  and gives as many channels back, of which the first three are the image;
* a JPEG model's ``max_quality`` is metadata only: a JPEG above it is kept as it is;
* a conditioned model (metadata ``condition`` "sigma" or "quality") takes a second
  input ``level``: float32, one per image (shape ``[batch]``): for a denoiser the
  noise sigma on the 0-255 scale (e.g. the image's estimated noise), for a JPEG
  model the quality 1-100 the file was saved at (its quantisation tables say).

Exported files are cached per weights file, named by the weights' sha256, so a
restore exports once; every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from . import __version__
from .errors import io_reason
from .files import replace_atomically
from .model import condition_of, conditioned, config_to_json
from .model.condition import LEVEL_MEANINGS, TYPICAL_LEVELS
from .model.folded import fold
from .onnx_extra import EXTRA_HINT, onnx_installed

INPUT, OUTPUT, LEVEL = "image", "restored", "level"
OPSET = 18
# Bump when the exported graph or its metadata change: cached files of another version are exported again.
EXPORT_VERSION = "1"
_DYNAMIC = {0: "batch", 2: "height", 3: "width"}
# onnxruntime and onnx, both needed to export and run: the optional extra that brings them.


class _RestoreGraph(torch.nn.Module):
    """What is traced: the restore direction on an already padded image."""

    def __init__(self, runner: torch.nn.Module) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        restore = getattr(self.runner, "restore_padded", self.runner)
        return restore(x) if level is None else restore(x, level)


def export_metadata(model: torch.nn.Module, task: str, task_params: dict, source: dict | None) -> dict[str, str]:
    """The file's metadata_props: enough for another tool to feed the graph and for irae to trust the cache."""
    source = source or {}
    return {
        "format": "irae-onnx",
        "export_version": EXPORT_VERSION,
        "irae_version": __version__,
        "task": task,
        "preset": str(source.get("preset") or model.config.arch),
        "arch": model.config.arch,
        "config": config_to_json(model.config),
        "task_params": json.dumps(task_params or {}, sort_keys=True),
        "max_quality": "" if task_params.get("max_quality") is None else str(task_params["max_quality"]),
        "channels": str(int(model.config.channels)),
        "condition": condition_of(model.config),
        "size_multiple": str(int(getattr(model, "size_multiple", 1))),
        "source_sha256": source.get("sha256") or "",
        "input": f"{INPUT}: float32 NCHW in [0, 1], H and W multiples of size_multiple; inpainting: pre-filled, "
                 f"mask as the 4th channel where channels is 4",
        "output": f"{OUTPUT}: float32 NCHW, same shape, not clamped; the image is its first 3 channels",
        **({"level": f"{LEVEL}: float32 [batch], {LEVEL_MEANINGS[model.config.condition]}"}
           if conditioned(model.config) else {}),
    }


def export_onnx(model: torch.nn.Module, task: str, task_params: dict, source: dict | None = None) -> bytes:
    """The ONNX file (bytes) of ``model``'s folded restore direction, checked by ``onnx.checker``.

    Raises ImportError without the onnx extra, anything torch's exporter raises otherwise.
    """
    import onnx

    graph = _RestoreGraph(fold(model.to("cpu").float().eval())).eval()
    multiple = int(getattr(model, "size_multiple", 1))
    side = max(2 * multiple, 32)
    side += (-side) % multiple
    example = torch.rand(1, int(model.config.channels), side, side, generator=torch.Generator().manual_seed(0))
    inputs, names, axes = (example,), [INPUT], {INPUT: _DYNAMIC, OUTPUT: _DYNAMIC}
    if conditioned(model.config):
        level = torch.full((1,), TYPICAL_LEVELS[model.config.condition])
        inputs, names, axes = (example, level), [INPUT, LEVEL], {**axes, LEVEL: {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that shapes are traced; neither is the
        # user's to act on: the graph takes any padded size (the tests run it at others than the example's).
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(graph, inputs, buf, opset_version=OPSET, input_names=names,
                              output_names=[OUTPUT], dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in export_metadata(model, task, task_params, source).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "irae", __version__
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def read_metadata(data_or_path: bytes | str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props as a dict."""
    import onnx

    proto = (onnx.load_from_string(data_or_path) if isinstance(data_or_path, bytes)
             else onnx.load(str(data_or_path), load_external_data=False))
    return {p.key: p.value for p in proto.metadata_props}


def export_source(sha256: str | None, training: dict | None = None) -> dict:
    """What an export records of its weights file: its sha256 (the cache key) and the preset it was trained as."""
    return {"sha256": sha256, "preset": (training or {}).get("arch")}


def cache_dir() -> Path:
    """Where exports are cached: $IRAE_CACHE_DIR/onnx, else the platform's user cache folder + irae/onnx."""
    if os.environ.get("IRAE_CACHE_DIR"):
        return Path(os.environ["IRAE_CACHE_DIR"]) / "onnx"
    if os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"])
    elif sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path.home() / ".cache"
    return base / "irae" / "onnx"


def cached_path(sha256: str) -> Path:
    return cache_dir() / f"{sha256}.v{EXPORT_VERSION}.onnx"


def store_in_cache(sha256: str, data: bytes) -> Path:
    """Write an export under its weights' sha256 (atomically: a concurrent run sees the old file or the new).
    Raises OSError as a plain write would."""
    path = cached_path(sha256)
    replace_atomically(path, data, overwrite=True)
    return path


def export_weights(weights: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, str]:
    """``irae export``: write the ONNX file of a weights file (name or path) to ``out``; -> its metadata."""
    from .errors import IraeError
    from .tasks import get_task
    from .weights import load_weights

    out = Path(out)
    if not onnx_installed():
        raise IraeError(f"irae export needs the onnx extra: {EXTRA_HINT}")
    if out.is_dir():
        raise IraeError(f"{out}: is a folder; give the file to write, e.g. -o model.onnx")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise IraeError(f"{out}: already exists; refusing to overwrite (use --overwrite)")
    loaded = load_weights(weights, device="cpu")
    channels = int(loaded.model.config.channels)
    params = get_task(loaded.task).params_for_weights(loaded.task_params, channels)
    data = export_onnx(loaded.model, loaded.task, params, export_source(loaded.sha256, loaded.training))
    try:
        replace_atomically(out, data, overwrite=overwrite)
    except FileExistsError:
        raise IraeError(f"{out}: already exists; refusing to overwrite (use --overwrite)") from None
    except OSError as e:
        raise IraeError(f"{out}: cannot write ({io_reason(e)}); choose a writable place") from None
    return read_metadata(data)
