"""Reading ``manifest.jsonl``: one JSON object per degraded file, each line validated on its own."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..errors import IraeError
from ..tasks import TASKS

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_VERSION = 1
NO_TASK = "none"  # a clean member of a mixed set (``irae degrade --task auto``): nothing to restore


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

_REQUIRED = {"id": str, "task": str, "level": str, "source": str, "clean": str, "degraded": str, "params": dict,
             "seed": int, "clean_sha256": str, "degraded_sha256": str}
_SHA = re.compile(r"[0-9a-f]{64}")


def _check_rel(value: str, where: str, key: str) -> None:
    p = Path(value)
    if p.is_absolute() or value.startswith("/") or ".." in p.parts or "\\" in value or not value:
        raise IraeError(f"{where}: {key} {value!r} must be a relative path inside the set ('/'-separated, no '..')")


def file_problem(entry: dict, root: Path) -> str | None:
    """Why the files of a manifest line are not the ones it describes, or None when they are."""
    for key in ("clean", "degraded", "mask"):
        if entry.get(key) is None:
            continue
        file = root / entry[key]
        try:
            digest = sha256(file.read_bytes())
        except OSError:
            return f"{file} is missing or unreadable"
        if digest != entry[f"{key}_sha256"]:
            return f"{file} does not match its sha256 (changed since the set was made)"
    return None


def files_match(entry: dict, root: Path) -> bool:
    return file_problem(entry, root) is None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IraeError(f"{path}: no manifest here; make a set with 'irae degrade'") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IraeError(f"{path}: cannot read manifest ({e})") from None


def _parse_line(line: str, where: str) -> dict:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise IraeError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(entry, dict):
        raise IraeError(f"{where}: expected a JSON object")
    return entry


def _check_version(entry: dict, where: str) -> None:
    """``manifest_version`` (absent = 1): a line from a newer irae may mean something this one cannot read."""
    version = entry.get("manifest_version", 1)
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise IraeError(f"{where}: manifest_version {version!r} is newer than this irae understands "
                        f"({MANIFEST_VERSION}); upgrade irae")


def _check_required(entry: dict, where: str) -> None:
    """The keys every line has: what it is (id, task, level, source), its files with their sha256, its
    degradation parameters and the seed its generator was given (an int, not a bool)."""
    for key, typ in _REQUIRED.items():
        if not isinstance(entry.get(key), typ) or (typ is int and isinstance(entry.get(key), bool)):
            raise IraeError(f"{where}: missing or invalid {key!r}")


def _check_task_mask(entry: dict, where: str) -> None:
    """``task`` is a known one, and ``mask`` (a path) is there exactly when the task needs a mask (inpaint)."""
    needs_mask = {**{name: t.needs_mask for name, t in TASKS.items()}, NO_TASK: False}
    if entry["task"] not in needs_mask:
        raise IraeError(f"{where}: unknown task {entry['task']!r}")
    mask = entry.get("mask")
    if (mask is None) == needs_mask[entry["task"]]:
        raise IraeError(f"{where}: task {entry['task']} {'needs' if mask is None else 'has no'} mask")
    if mask is not None and not isinstance(mask, str):
        raise IraeError(f"{where}: invalid 'mask'")


def _check_files(entry: dict, where: str) -> None:
    """``clean``, ``degraded``, ``mask`` stay inside the set; each ``*_sha256`` given (``mask_sha256`` always
    with a mask) is 64 lower-case hex digits."""
    for key in ("clean", "degraded", "mask"):
        if entry.get(key) is not None:
            _check_rel(entry[key], where, key)
    for key in ("clean_sha256", "degraded_sha256", "mask_sha256"):
        value = entry.get(key)
        if (value is not None or (key == "mask_sha256" and entry.get("mask") is not None)) and not (
                isinstance(value, str) and _SHA.fullmatch(value)):
            raise IraeError(f"{where}: invalid {key!r}")


def _validate_entry(entry: dict, where: str) -> None:
    """Raise IraeError naming ``where`` (file:line) on the first field that is missing or malformed."""
    _check_version(entry, where)
    _check_required(entry, where)
    _check_task_mask(entry, where)
    _check_files(entry, where)


def read_manifest(path: str | Path, *, verify: bool = False) -> list[dict]:
    """Read and validate a ``manifest.jsonl`` (or the set folder holding one).

    Returns one dict per degraded file, in file order (sorted by ``id``).  Stable
    keys (manifest_version 1):

    - ``id`` (unique, ``<level>/<rel without extension>``), ``task``
      (denoise|jpeg|inpaint, or none for the clean members of a mixed set, whose
      ``degraded`` is their ``clean`` file), ``level``, ``source`` (input path relative to CLEAN)
    - ``clean``, ``degraded``, ``mask`` (None unless inpaint): paths relative to
      the folder holding the manifest, '/'-separated
    - ``params``: denoise ``sigma`` (used, 0-255 scale), ``sigma_range`` (blind
      levels), ``protocol`` (clip|float); jpeg ``quality``, ``subsampling``
      (None for grayscale), ``double_quality``, ``encoder``; inpaint ``mask``
      (kind), ``hole_range``, ``hole_ratio`` (measured), ``fill``, ``fill_u8``
    - ``seed`` (the image's generator seed), ``base_seed``, ``width``, ``height``,
      ``channels``, ``clean_sha256``, ``degraded_sha256``, ``mask_sha256``,
      ``versions`` (irae, torch, pillow, numpy, libjpeg, libjpeg_turbo, zlib)

    Unknown keys are kept (newer minor additions).  Raises IraeError naming the
    line on malformed input; with ``verify`` also checks that every file exists
    and matches its sha256.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    entries: list[dict] = []
    ids: set[str] = set()
    for n, line in enumerate(_read_lines(path), 1):
        where = f"{path}:{n}"
        if not line.strip():
            continue
        entry = _parse_line(line, where)
        _validate_entry(entry, where)
        if entry["id"] in ids:
            raise IraeError(f"{where}: duplicate id {entry['id']!r}")
        ids.add(entry["id"])
        if verify:
            problem = file_problem(entry, path.parent)
            if problem:
                raise IraeError(f"{where}: {problem}")
        entries.append(entry)
    return entries

