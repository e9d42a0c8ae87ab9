"""Degraded test sets made from image files, with a manifest: ``irae degrade`` without the CLI.

Layout of OUT (all paths in the manifest are relative to OUT, '/'-separated)::

    clean/<rel>.png             the clean image the degradations were applied to
    <level>/<rel>.png           denoise (clip protocol) and inpaint (holes filled with grey)
    <level>/<rel>.npy           denoise, float protocol: float32 (C, H, W), unclipped, 1.0 = white
    <level>/<rel>.jpg           jpeg
    masks/<level>/<rel>.png     inpaint masks, 8-bit grayscale, 255 = missing, 0 = known
    manifest.jsonl              one JSON object per degraded file, sorted by id

``<rel>`` is the input's path relative to CLEAN without its extension.  Level
names: ``sigma25`` (or ``sigma0-55`` for a blind range), ``q10`` (``-444`` /
``-422`` for other chroma subsampling, ``-dq90`` for double JPEG whose first
pass was at 90), ``box`` / ``boxes`` / ``strokes`` (``box-10-20`` with hole-ratio
bins, in percent).

Each image is read once, rounded to 8 bits (so 16-bit inputs are quantised
before anything else) and degraded per level with a ``torch.Generator`` seeded
by ``derive_seed(seed, rel, level)``: outputs are a function of the seed, the
relative path and the level only, never of file order or worker count.  Every
PNG is written by Pillow with ``compress_level=6`` and no metadata, so the
bytes are reproducible for a given Pillow/zlib build.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .degradations import Level, build_levels, derive_seed, jpeg_bytes, quantize_u8
from .environment import codec_versions
from .errors import ImageError, IraeError
from .imageio import read_image
from .files import Source, atomic_write_bytes, discover, folder_problem, is_within, remove_stale_temp_files
from .pixels import mask_to_pil, to_pil, to_u8
from .tasks import TASKS

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_VERSION = 1
PNG_COMPRESS_LEVEL = 6
CLEAN_DIR = "clean"
MASK_DIR = "masks"

@dataclass
class TestSetResult:
    out: Path
    levels: list[Level]
    sources: list[Source]
    records: list[dict] = field(default_factory=list)  # manifest lines, sorted by id
    failures: list[str] = field(default_factory=list)  # one line per failed file
    written: int = 0  # files written in this run
    kept: int = 0  # files already there with identical bytes (--skip-existing)
    carried: int = 0  # lines kept from an earlier manifest in OUT (outputs this run did not make)
    manifest: Path | None = None  # None for a dry run


# --------------------------------------------------------------------------- encoding

def png_bytes(x: torch.Tensor) -> bytes:
    """8-bit PNG of (C, H, W) in [0, 1] (clipped and rounded), no metadata: same pixels -> same bytes."""
    buf = io.BytesIO()
    to_pil(x).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def npy_bytes(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32)), allow_pickle=False)
    return buf.getvalue()


def _mask_png(mask: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    mask_to_pil(mask).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _is_same_png(data: bytes, x: torch.Tensor) -> bool:
    """True when ``data`` is a PNG that, read as it is, has exactly the pixels of ``x``.

    Then the original bytes serve as the clean copy (its sha256 is the source
    file's).  An EXIF-rotated, palette, alpha, 16-bit or transparent-colour PNG
    fails the test and is re-encoded instead.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if img.format != "PNG" or img.mode not in ("RGB", "L") or "transparency" in img.info:
            return False
        arr = np.asarray(img)
    except Exception:  # noqa: BLE001 - read_image already decoded it; any doubt means re-encode
        return False
    ref = to_u8(x)
    return arr.shape == ref.shape and bool(np.array_equal(arr, ref))


def _degrade(level: Level, x: torch.Tensor, g: torch.Generator) -> tuple[str, bytes, bytes | None, dict]:
    """-> (suffix, degraded bytes, mask PNG bytes or None, parameters for the manifest)."""
    y, mask, params = level.draw(x, g)
    p = level.params
    if level.task == "denoise":
        if p["protocol"] == "float":
            return ".npy", npy_bytes(y), None, params
        return ".png", png_bytes(quantize_u8(y)), None, params
    if level.task == "jpeg":
        return ".jpg", jpeg_bytes(x, p["quality"], p["subsampling"], p["double_quality"]), None, params
    return ".png", png_bytes(y), _mask_png(mask), params


# --------------------------------------------------------------------------- one image

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Writer:
    """Writes into OUT under the run's policy and counts what it did."""

    def __init__(self, out: Path, policy: str):
        self.out, self.policy = out, policy  # policy: "new" | "overwrite" | "skip"

    def put(self, rel: str, data: bytes) -> bool:
        """Write OUT/rel; -> True if written, False if an identical file was kept."""
        path = self.out / rel
        if self.policy == "skip" and path.exists():
            try:
                same = path.read_bytes() == data
            except OSError as e:
                raise ImageError(f"{path}: exists but cannot be read ({e.strerror}); remove it or use --overwrite"
                                 ) from None
            if not same:
                raise ImageError(f"{path}: exists with different content (other settings, seed or library "
                                 f"version); remove it, use --overwrite, or choose a new output folder")
            return False
        try:
            atomic_write_bytes(path, data, overwrite=self.policy == "overwrite")
        except OSError as e:
            raise ImageError(f"{path}: cannot write ({e.strerror or e}); check free space and permissions") from None
        return True


@dataclass(frozen=True)
class _Run:
    """What every image of one run shares (the writer is thread-safe: each write is atomic)."""
    levels: list[Level]
    seed: int
    writer: _Writer
    versions: dict  # codec_versions(), recorded on every manifest line


@dataclass
class _Outcome:
    """What one image gave: its manifest lines, failure lines and file counts."""
    records: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: int = 0
    kept: int = 0

    def put(self, writer: _Writer, rel: str, data: bytes) -> None:
        if writer.put(rel, data):
            self.written += 1
        else:
            self.kept += 1


@dataclass(frozen=True)
class _Clean:
    """One input as written to clean/: the pixels every level degrades and the names its outputs get."""
    source: str  # the input's path relative to CLEAN, '/'-separated (also the seed's key)
    stem: str  # ``source`` without extension: the file name under clean/, each level and masks/
    x: torch.Tensor  # rounded to 8 bits, as the clean file holds it
    sha256: str  # of the clean file's bytes

    @property
    def rel(self) -> str:
        return f"{CLEAN_DIR}/{self.stem}.png"


def _write_clean(src: Source, run: _Run, outcome: _Outcome) -> _Clean | None:
    """Read ``src`` and write its clean copy; None (with the failure noted in ``outcome``) if either fails."""
    try:
        data = src.path.read_bytes()
    except OSError as e:
        outcome.failures.append(f"{src.path}: cannot read ({e.strerror or e}); check it exists and is readable")
        return None
    try:
        x, _meta = read_image(src.path)
    except ImageError as e:
        outcome.failures.append(str(e))
        return None
    # Degrade exactly what the clean file holds: 16-bit inputs are rounded to 8 bits first.
    x = quantize_u8(x)
    clean_bytes = data if _is_same_png(data, x) else png_bytes(x)
    clean = _Clean(src.rel.as_posix(), src.rel.with_suffix("").as_posix(), x, _sha256(clean_bytes))
    try:
        outcome.put(run.writer, clean.rel, clean_bytes)
    except ImageError as e:
        outcome.failures.append(str(e))
        return None
    return clean


def _write_level(src: Source, clean: _Clean, level: Level, run: _Run, outcome: _Outcome) -> None:
    """Degrade one image at one level, write its file(s) and add its manifest line (or a failure line)."""
    image_seed = derive_seed(run.seed, clean.source, level.name)
    g = torch.Generator().manual_seed(image_seed)
    try:
        suffix, degraded, mask, params = _degrade(level, clean.x, g)
        deg_rel = f"{level.name}/{clean.stem}{suffix}"
        mask_rel = f"{MASK_DIR}/{level.name}/{clean.stem}.png" if mask is not None else None
        outcome.put(run.writer, deg_rel, degraded)
        if mask is not None:
            outcome.put(run.writer, mask_rel, mask)
    except ImageError as e:
        outcome.failures.append(f"{src.path} [{level.name}]: {e}" if str(src.path) not in str(e) else str(e))
        return
    outcome.records.append({
        "manifest_version": MANIFEST_VERSION,
        "id": f"{level.name}/{clean.stem}",
        "task": level.task,
        "level": level.name,
        "source": clean.source,
        "clean": clean.rel,
        "degraded": deg_rel,
        "mask": mask_rel,
        "params": params,
        "seed": image_seed,
        "base_seed": run.seed,
        "width": int(clean.x.shape[-1]),
        "height": int(clean.x.shape[-2]),
        "channels": int(clean.x.shape[0]),
        "clean_sha256": clean.sha256,
        "degraded_sha256": _sha256(degraded),
        "mask_sha256": _sha256(mask) if mask is not None else None,
        "versions": run.versions,
    })


def _process(src: Source, run: _Run) -> _Outcome:
    """All levels of one image; a level that fails does not stop the others."""
    outcome = _Outcome()
    clean = _write_clean(src, run, outcome)
    if clean is not None:
        for level in run.levels:
            _write_level(src, clean, level, run, outcome)
    return outcome


# --------------------------------------------------------------------------- the run

def _policy(overwrite: bool, skip_existing: bool, workers: int) -> str:
    """What to do with files already in OUT: "new" (refuse a non-empty OUT), "overwrite" or "skip"."""
    if overwrite and skip_existing:
        raise IraeError("give --overwrite or --skip-existing, not both")
    if workers < 1:
        raise IraeError(f"--workers {workers}: give 1 or more")
    return "overwrite" if overwrite else "skip" if skip_existing else "new"


def _check_paths(clean: Path, out: Path, policy: str) -> None:
    if not clean.exists():
        raise IraeError(f"{clean}: no such file or folder")
    if clean.is_dir() and is_within(out, clean):
        raise IraeError(f"output folder {out} is inside the clean folder {clean}; choose an output folder "
                        f"outside it (irae never writes into CLEAN)")
    if is_within(clean, out):
        raise IraeError(f"the clean input {clean} is inside the output folder {out}; choose another output "
                        f"folder (irae never writes into CLEAN)")
    if out.exists() and not out.is_dir():
        raise IraeError(f"{out}: exists and is not a folder")
    problem = folder_problem(out)
    if problem:
        raise IraeError(problem)
    if policy == "new" and out.is_dir() and any(os.scandir(out)):
        raise IraeError(f"{out}: output folder is not empty; use --overwrite to replace files, "
                        f"--skip-existing to keep identical ones, or choose a new folder")


def _find_sources(clean: Path, out: Path, recursive: bool, include: list[str] | None,
                  exclude: list[str] | None) -> list[Source]:
    """The images to degrade; refuses none at all, and two whose outputs would share a name."""
    sources = discover(clean, recursive=recursive, include=include or None, exclude=exclude or None, skip=[out])
    if not sources:
        hint = "" if recursive else " (add -r to look in subfolders)"
        raise IraeError(f"{clean}: no images found{hint}; readable types: png, jpg, webp, tif, bmp")
    _check_collisions(sources)
    return sources


def _check_collisions(sources: list[Source]) -> None:
    # Case-folded: on a case-insensitive file system A.png and a.png would overwrite each other.
    seen: dict[str, Source] = {}
    for src in sources:
        key = src.rel.with_suffix("").as_posix().casefold()
        if key in seen:
            a, b = seen[key].rel.as_posix(), src.rel.as_posix()
            raise IraeError(f"{a} and {b} would both be written as {CLEAN_DIR}/{src.rel.with_suffix('').as_posix()}"
                            f".png; rename one or leave one out with --exclude")
        seen[key] = src


def _earlier_manifest(out: Path, policy: str) -> list[dict]:
    """The lines of a manifest already in OUT (read before writing, so a broken one stops the run early)."""
    if policy == "new" or not (out / MANIFEST_NAME).is_file():
        return []
    try:
        return read_manifest(out / MANIFEST_NAME)
    except IraeError as e:
        raise IraeError(f"{e}; move the old manifest away to start a new one") from None


def _run_all(sources: list[Source], run: _Run, workers: int,
             done: Callable[[Source, _Outcome], None]) -> None:
    """``_process`` every source, calling ``done`` in this thread as each image finishes."""
    if workers == 1:
        for src in sources:
            done(src, _process(src, run))
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="irae-degrade")
    try:
        futures = {pool.submit(_process, src, run): src for src in sources}
        for fut in as_completed(futures):
            done(futures[fut], fut.result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # running images finish; their writes are atomic
        raise
    pool.shutdown()


def _carry_over(result: TestSetResult, previous: list[dict]) -> None:
    # Lines of an earlier manifest stay when this run did not remake that output and its files are
    # unchanged: adding a level to a set (or a run that refused to replace a file) keeps the set described.
    made = {r["id"] for r in result.records}
    for entry in previous:
        if entry["id"] not in made and _files_match(entry, result.out):
            result.records.append(entry)
            result.carried += 1


def _write_manifest(result: TestSetResult) -> None:
    result.records.sort(key=lambda r: r["id"])
    text = "".join(json.dumps(r) + "\n" for r in result.records)
    result.manifest = result.out / MANIFEST_NAME
    result.out.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_bytes(result.manifest, text.encode(), overwrite=True)
    except ImageError as e:
        raise IraeError(str(e)) from None


def make_test_set(clean: str | Path, out: str | Path, *, task: str, seed: int = 0,
                  sigma: list[tuple[float, float]] | None = None, noise_protocol: str | None = None,
                  quality: list[int] | None = None, subsampling: str | None = None,
                  double_quality: int | None = None, masks: list[str] | None = None,
                  hole_ratio: tuple[float, float] | None = None, hole_bins: list[tuple[float, float]] | None = None,
                  recursive: bool = True, include: list[str] | None = None, exclude: list[str] | None = None,
                  workers: int = 1, overwrite: bool = False, skip_existing: bool = False, dry_run: bool = False,
                  on_start: Callable[[int], None] | None = None,
                  on_file: Callable[[Source, list[str]], None] | None = None) -> TestSetResult:
    """Degrade every image under ``clean`` at every level into ``out`` and write ``out/manifest.jsonl``.

    Usage problems (bad options, missing input, non-empty ``out`` without
    ``overwrite``/``skip_existing``, ``out`` and ``clean`` nested, two inputs
    mapping to one output) raise IraeError before anything is written.  A file
    that cannot be read or written is reported through ``on_file(source,
    failure lines)`` (called in the caller's thread, once per image, in
    completion order) and listed in ``result.failures``; the others go on.
    """
    levels = build_levels(task, sigma=sigma, noise_protocol=noise_protocol, quality=quality,
                          subsampling=subsampling, double_quality=double_quality, masks=masks,
                          hole_ratio=hole_ratio, hole_bins=hole_bins)
    policy = _policy(overwrite, skip_existing, workers)
    clean, out = Path(clean), Path(out)
    _check_paths(clean, out, policy)
    sources = _find_sources(clean, out, recursive, include, exclude)
    previous = _earlier_manifest(out, policy)
    result = TestSetResult(out=out, levels=levels, sources=sources)
    if dry_run:
        return result

    if out.is_dir():  # what a killed earlier run left mid-write (.NAME.irae-tmp-PID-*, its process gone)
        remove_stale_temp_files([out], recursive=True)
    run = _Run(levels, seed, _Writer(out, policy), codec_versions())
    if on_start:
        on_start(len(sources))

    def done(src: Source, outcome: _Outcome) -> None:
        result.records.extend(outcome.records)
        result.failures.extend(outcome.failures)
        result.written += outcome.written
        result.kept += outcome.kept
        if on_file:
            on_file(src, outcome.failures)

    _run_all(sources, run, workers, done)
    _carry_over(result, previous)
    _write_manifest(result)
    return result


# --------------------------------------------------------------------------- reading manifests

_REQUIRED = {"id": str, "task": str, "level": str, "source": str, "clean": str, "degraded": str, "params": dict,
             "seed": int, "clean_sha256": str, "degraded_sha256": str}
_SHA = re.compile(r"[0-9a-f]{64}")


def _check_rel(value: str, where: str, key: str) -> None:
    p = Path(value)
    if p.is_absolute() or value.startswith("/") or ".." in p.parts or "\\" in value or not value:
        raise IraeError(f"{where}: {key} {value!r} must be a relative path inside the set ('/'-separated, no '..')")


def _file_problem(entry: dict, root: Path) -> str | None:
    """Why the files of a manifest line are not the ones it describes, or None when they are."""
    for key in ("clean", "degraded", "mask"):
        if entry.get(key) is None:
            continue
        file = root / entry[key]
        try:
            digest = _sha256(file.read_bytes())
        except OSError:
            return f"{file} is missing or unreadable"
        if digest != entry[f"{key}_sha256"]:
            return f"{file} does not match its sha256 (changed since the set was made)"
    return None


def _files_match(entry: dict, root: Path) -> bool:
    return _file_problem(entry, root) is None


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
    if entry["task"] not in TASKS:
        raise IraeError(f"{where}: unknown task {entry['task']!r}")
    mask = entry.get("mask")
    if (mask is None) == TASKS[entry["task"]].needs_mask:
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
      (denoise|jpeg|inpaint), ``level``, ``source`` (input path relative to CLEAN)
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
            problem = _file_problem(entry, path.parent)
            if problem:
                raise IraeError(f"{where}: {problem}")
        entries.append(entry)
    return entries
