"""Weights files: safetensors only (no pickle anywhere), self-describing, sha256-checked.

A weights file holds the state dict and string metadata:

* ``format`` = ``irae-weights``, ``format_version``
* ``arch`` and ``config`` (JSON of the model config) -- enough to rebuild the model
* ``task`` (denoise / jpeg / inpaint) and ``task_params`` (JSON, e.g. inpainting fill value)
* ``irae_version`` and ``training`` (JSON summary written by ``irae train``)

Shipped weights are listed in ``weights/index.json`` with their sha256, which is
checked on every load by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from . import __version__
from .errors import WeightsError, io_reason
from .files import atomic_save_safetensors, replace_atomically
from .model import config_from_dict, config_to_json, create_model
from .tasks import TASKS

FORMAT = "irae-weights"
FORMAT_VERSION = "1"
# What `irae train` writes beside its weights; named here so a checkpoint given as weights is recognised.
CHECKPOINT_FORMAT = "irae-train-checkpoint"
CHECKPOINT_SUFFIX = ".ckpt.safetensors"  # after the --out file's stem, unless --checkpoint names it
INDEX_FILE = "index.json"
INSTALLED_SUBDIR = ("share", "irae", "weights")  # where pyproject's data-files puts weights/ on install


def weights_search_path() -> list[Path]:
    """Where shipped weights may be, in order: $IRAE_WEIGHTS_DIR alone if set, else a source checkout's
    weights/, then the installed copy (``pip install .`` puts weights/ in <prefix>/share/irae/weights; the
    user scheme's prefix for ``--user``)."""
    if os.environ.get("IRAE_WEIGHTS_DIR"):
        return [Path(os.environ["IRAE_WEIGHTS_DIR"])]
    candidates = [Path(__file__).resolve().parent.parent / "weights"]
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        candidates.append(Path(sysconfig.get_path("data", scheme)).joinpath(*INSTALLED_SUBDIR))
    return list(dict.fromkeys(candidates))


def shipped_weights_dir() -> Path:
    """The first place on the search path that holds a registry (the first place when none does)."""
    candidates = weights_search_path()
    return next((c for c in candidates if (c / INDEX_FILE).is_file()), candidates[0])


WEIGHTS_DIR = shipped_weights_dir()


@dataclass
class LoadedWeights:
    model: torch.nn.Module
    path: Path
    sha256: str
    task: str
    task_params: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(model: torch.nn.Module, path: str | Path, *, task: str, task_params: dict | None = None,
                 training: dict | None = None) -> str:
    """Write ``model`` atomically (temp file + rename) and return the file's sha256."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.config.arch,
        "config": config_to_json(model.config),
        "task": task,
        "task_params": json.dumps(task_params or {}, sort_keys=True),
        "irae_version": __version__,
        "training": json.dumps(training or {}, sort_keys=True),
    }
    atomic_save_safetensors(state, path, meta)
    return sha256_file(path)


def read_index(weights_dir: Path | None = None) -> dict:
    index_path = (weights_dir or WEIGHTS_DIR) / INDEX_FILE
    if not index_path.exists():
        return {}
    try:
        return json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{index_path}: not valid JSON ({e}); restore it from the repository") from e


def default_weights_for(task: str, weights_dir: Path | None = None) -> str | None:
    """Name of the shipped weights that are the default for ``task``, if any."""
    for name, entry in read_index(weights_dir).items():
        if entry.get("task") == task and entry.get("default", False):
            return name
    return None


def require_default_weights(task: str) -> str:
    """``default_weights_for(task)``, or the one message saying where irae looked and what to do instead."""
    name = default_weights_for(task)
    if name is None:
        looked = ", ".join(str(p) for p in weights_search_path())
        raise WeightsError(f"no shipped weights for task {task!r} (looked in {looked}); train some with "
                           f"'irae train --task {task} ... --out w.safetensors' and pass --weights w.safetensors")
    return name


def resolve(name_or_path: str | Path, weights_dir: Path | None = None) -> tuple[Path, str | None]:
    """A registry name or a file path -> (path, expected sha256 or None)."""
    weights_dir = weights_dir or WEIGHTS_DIR
    index = read_index(weights_dir)
    key = str(name_or_path)
    if key in index:
        path = weights_dir / index[key]["file"]
        if not path.is_file():  # a partial copy of the weights folder, or a file deleted by hand
            raise WeightsError(f"{path}: the shipped weights {key!r} listed in {weights_dir / INDEX_FILE} are "
                               f"missing; restore the file from the repository or reinstall irae")
        return path, index[key]["sha256"]
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(sorted(index)) or "none shipped yet"
        raise WeightsError(f"{path}: weights file not found (registered names: {known}); "
                           f"train one with 'irae train' or pass an existing .safetensors path")
    for entry in index.values():  # a shipped file passed by path is checked too
        if (weights_dir / entry["file"]).resolve() == path.resolve():
            return path, entry["sha256"]
    return path, None


def load_weights(name_or_path: str | Path, *, device: str | torch.device = "cpu",
                 expect_task: str | None = None, weights_dir: Path | None = None) -> LoadedWeights:
    path, expected_sha = resolve(name_or_path, weights_dir)
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a .safetensors weights file")
    try:
        sha = sha256_file(path)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the weights file ({io_reason(e)})") from None
    if expected_sha is not None and sha != expected_sha:
        raise WeightsError(f"{path}: sha256 {sha[:12]}… does not match the registry ({expected_sha[:12]}…); "
                           f"the file is corrupt or was replaced — restore it from the repository")
    try:
        with safe_open(str(path), framework="pt") as f:  # one pass: metadata and tensors
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(unreadable_safetensors(path, e, "weights")) from None
    if meta.get("format") != FORMAT:
        if meta.get("format") == CHECKPOINT_FORMAT:
            raise WeightsError(checkpoint_not_weights(path))
        raise WeightsError(f"{path}: safetensors file without irae metadata (format={meta.get('format')!r}); "
                           f"only files written by 'irae train' can be loaded")
    refuse_non_finite(state, path)
    config_dict = metadata_json(meta, "config", path, required=True)
    task_params = metadata_json(meta, "task_params", path)
    training = metadata_json(meta, "training", path)
    try:
        config = config_from_dict(config_dict)
        if config.arch != meta.get("arch"):
            raise ValueError(f"metadata arch {meta.get('arch')!r} disagrees with config arch {config.arch!r}")
        model = create_model(config)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"{path}: unusable model description in metadata field 'config' ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise WeightsError(f"{path}: tensors do not match the {config.arch} config in its metadata ({first})") from e
    task = meta.get("task", "")
    if expect_task is not None and task != expect_task:
        raise WeightsError(f"{path}: weights were trained for task {task!r}, not {expect_task!r}; "
                           f"pass weights for {expect_task!r} or change --task")
    known = TASKS.get(task)
    problem = known.params_problem(task_params) if known is not None else None
    if problem is not None:
        raise WeightsError(f"{path}: metadata {problem}; the file was damaged or edited -- download or train it "
                           f"again, or correct the field")
    if not model.is_initialized:
        raise WeightsError(f"{path}: model's ActNorm layers were never initialised; the file is not a trained model")
    model.eval().to(device)
    return LoadedWeights(model=model, path=path, sha256=sha, task=task, task_params=task_params,
                         training=training, metadata=meta)


def read_task_params(name_or_path: str | Path) -> dict:
    """The ``task_params`` a weights file runs with, from its metadata alone (no tensors read, no checksum:
    enough to plan with; ``load_weights`` checks the file when the model is needed)."""
    return _read_metadata_field(name_or_path, "task_params")


def read_model_config(name_or_path: str | Path) -> dict:
    """The model description (``config``) of a weights file, from its metadata alone, as ``read_task_params``."""
    return _read_metadata_field(name_or_path, "config", required=True)


def _read_metadata_field(name_or_path: str | Path, key: str, required: bool = False) -> dict:
    path, _ = resolve(name_or_path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(unreadable_safetensors(path, e, "weights")) from None
    return metadata_json(meta, key, path, required=required)


def checkpoint_not_weights(path: Path) -> str:
    """Why a training checkpoint is refused as weights, naming the weights file the same run wrote beside it."""
    suffix = CHECKPOINT_SUFFIX
    head = f"{path}: a training checkpoint (what 'irae train --resume' continues from), not weights"
    if not path.name.endswith(suffix):  # named with --checkpoint: the --out name cannot be told from it
        return f"{head}; use the weights file its run wrote with --out"
    weights = path.with_name(path.name[: -len(suffix)] + ".safetensors")
    if weights.is_file():
        return f"{head}; use the weights its run wrote beside it (--out): {weights}"
    return (f"{head}; its weights, {weights} (--out), are written when the run finishes -- finish it with "
            f"'irae train --resume {path}'")


def refuse_non_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """A NaN or infinity in any tensor turns every output black or NaN with no error: refuse the file."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise WeightsError(f"{path}: tensor {name!r} holds {kind} values; the weights are damaged (a diverged "
                               f"training or an edited file) -- train them again or use other weights")


def metadata_json(meta: dict, key: str, path: Path, *, required: bool = False) -> dict:
    """A JSON-object field of a safetensors file's metadata; a one-line WeightsError naming file and field."""
    raw = meta.get(key)
    if raw is None:
        if required:
            raise WeightsError(f"{path}: metadata has no {key!r} field; the file was not written by 'irae train' "
                               f"or was edited -- train it again")
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise WeightsError(f"{path}: metadata field {key!r} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                           f"the file was damaged or edited -- download or train it again") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: metadata field {key!r} is a JSON {type(value).__name__}, not an object; "
                           f"the file was damaged or edited -- download or train it again")
    return value


_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}


def unreadable_safetensors(path: Path, e: BaseException, what: str = "weights") -> str:
    """Why safetensors could not open ``path``: a pickle, not safetensors at all, or truncated (one line)."""
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError as err:
        return f"{path}: cannot read ({err.strerror or err})"
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) \
            or path.suffix.lower() in _PICKLE_SUFFIXES:
        advice = ("convert it with torch.load(..., weights_only=True) and irae_cli.weights.save_weights in your "
                  "own Python (README, 'Weights'), or train weights with 'irae train'" if what == "weights" else
                  "resume from the .ckpt.safetensors file 'irae train' wrote")
        return f"{path}: not a safetensors file but a PyTorch/pickle file (irae never loads pickle files); {advice}"
    if len(head) < 9 or head[8:9] != b"{":
        return (f"{path}: not a readable safetensors file ({reason}); it is not a {what} file 'irae train' "
                f"wrote")
    if 8 + int.from_bytes(head[:8], "little") > size:
        return f"{path}: not a readable safetensors file ({reason}); it is truncated -- download or train it again"
    return f"{path}: not a readable safetensors file ({reason}); it may be truncated -- download or train it again"


def register(name: str, path: Path, *, task: str, default: bool = True, card: str | None = None,
             weights_dir: Path | None = None) -> None:
    """Add or update a shipped weights entry in weights/index.json (used when shipping)."""
    weights_dir = weights_dir or WEIGHTS_DIR
    index = read_index(weights_dir)
    if default:
        for entry in index.values():
            if entry.get("task") == task:
                entry["default"] = False
    index[name] = {"file": Path(path).name, "sha256": sha256_file(Path(path)), "task": task,
                   "default": default, **({"card": card} if card else {})}
    # replaced whole: a restore reading the index meanwhile sees the old one or the new, never a partial file
    replace_atomically(weights_dir / INDEX_FILE, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(),
                       overwrite=True)
