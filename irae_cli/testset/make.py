"""``make_test_set``: check everything, then degrade every image (in worker threads) and write the manifest."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..degradations import Level, build_levels
from ..environment import codec_versions
from ..errors import ImageError, IraeError
from ..files import (Source, atomic_write_bytes, discover, folder_problem, folders_reaching, is_within,
                     no_images_message, remove_stale_temp_files)
from ..interrupts import held_interrupts
from .images import CLEAN_DIR, MASK_DIR, ImageOutcome, RunSetup, Writer, process_image
from .manifest import MANIFEST_NAME, files_match, read_manifest


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


def _write_policy(overwrite: bool, skip_existing: bool, workers: int) -> str:
    """Check the run options; -> what to do with files already in OUT: "new" (refuse a non-empty OUT),
    "overwrite" or "skip" (keep identical files)."""
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
        raise IraeError(no_images_message(clean, hint))
    _check_collisions(sources)
    return sources


def _check_links(clean: Path, out: Path, sources: list[Source], levels: list[Level]) -> None:
    """No output may reach CLEAN through a link inside OUT (``OUT/clean -> CLEAN``)."""
    subfolders = {s.rel.parent for s in sources}
    tops = [CLEAN_DIR, *(lv.name for lv in levels), *(f"{MASK_DIR}/{lv.name}" for lv in levels)]
    reaching = folders_reaching([out / top / sub for top in tops for sub in subfolders], clean)
    if reaching:
        raise IraeError(f"{reaching[0]} leads into the clean input {clean} (a link in the output folder); remove "
                        f"the link or choose another output folder (irae never writes into CLEAN)")


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


def _run_all(sources: list[Source], run: RunSetup, workers: int,
             done: Callable[[Source, ImageOutcome], None]) -> None:
    """``process_image`` every source, calling ``done`` in this thread as each image finishes."""
    if workers == 1:
        for src in sources:
            outcome = process_image(src, run)
            with held_interrupts():  # a Ctrl-C inside done would describe the image by halves
                done(src, outcome)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="irae-degrade")
    reported: set = set()
    futures: dict = {}
    try:
        with held_interrupts():  # cut short, the images submitted so far would be written but never described
            futures = {pool.submit(process_image, src, run): src for src in sources}
        for fut in as_completed(futures):
            with held_interrupts():  # between the two, Ctrl-C would describe the image twice
                done(futures[fut], fut.result())
                reported.add(fut)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # running images finish; their writes are atomic
        for fut, src in futures.items():  # ... and count as finished
            if fut not in reported and fut.done() and not fut.cancelled() and fut.exception() is None:
                done(src, fut.result())
        raise
    pool.shutdown()


def _carry_over(result: TestSetResult, previous: list[dict], check_files: bool = True) -> None:
    # Lines of an earlier manifest stay when this run did not remake that output and its files are
    # unchanged: adding a level to a set (or a run that refused to replace a file) keeps the set described.
    made = {r["id"] for r in result.records}
    for entry in previous:
        if entry["id"] not in made and (not check_files or files_match(entry, result.out)):
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
    policy = _write_policy(overwrite, skip_existing, workers)
    clean, out = Path(clean), Path(out)
    _check_paths(clean, out, policy)
    sources = _find_sources(clean, out, recursive, include, exclude)
    _check_links(clean, out, sources, levels)
    previous = _earlier_manifest(out, policy)
    result = TestSetResult(out=out, levels=levels, sources=sources)
    if dry_run:
        return result

    if out.is_dir():  # what a killed earlier run left mid-write (.NAME.irae-tmp-PID-*, its process gone)
        remove_stale_temp_files([out], recursive=True)
    run = RunSetup(levels, seed, Writer(out, policy), codec_versions())
    if on_start:
        on_start(len(sources))

    def done(src: Source, outcome: ImageOutcome) -> None:
        result.records.extend(outcome.records)
        result.failures.extend(outcome.failures)
        result.written += outcome.written
        result.kept += outcome.kept
        if on_file:
            on_file(src, outcome.failures)

    try:
        _run_all(sources, run, workers, done)
    except KeyboardInterrupt:
        # The images finished so far are a set of their own: described, a resume adds to it (and checks
        # the earlier lines' files then, so Ctrl-C does not wait for them to be hashed).
        _carry_over(result, previous, check_files=False)
        _write_manifest(result)
        raise
    _carry_over(result, previous)
    _write_manifest(result)
    return result
