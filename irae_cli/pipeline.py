"""Restore a file or a folder tree: plan, decode in the background, batch by size, restore, write in the background.

``plan_restore`` maps every input to its output and finds the problems that
must stop a run before any work (two inputs onto one output, an output that
would replace an input, outputs that already exist).  ``restore`` runs the
plan: reader threads decode ahead of the model, images of equal size are
grouped into batches for the ``Restorer`` (which tiles large images), and
writer threads encode and rename the results into place, so the device never
waits on one file at a time and memory stays bounded on huge folders.  A bad
file costs one line on stderr and one ``failed`` line in the report; the run
goes on and ends with exit code 1.  Under torchrun, or with ``--shard K/N``, each
process runs its pixel-balanced part of the same plan (shard.py, distributed.py,
report_parts.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from .distributed import Dist, init_distributed, rank_device
from .errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, ImageError, IraeError, io_reason, one_line
from .imageio import (FORMATS, PIL_FORMAT, ImageMeta, find_mask, image_pixels, image_size, output_suffix,
                      set_warning_handler)
from .files import IMAGE_EXTENSIONS, Source, discover, folder_problem, remove_stale_temp_files
from .interrupts import catch_sigterm, release_sigterm
from .report_parts import join_parts, leftover_parts, part_path, settle_leftovers
from .shard import Shard, header_pixels, parse_shard, split_by_pixels

OUTPUT_FORMATS = ("auto", "same", *FORMATS)
# A batch never holds more than this many pixels (large images go one at a time and are tiled).
BATCH_PIXELS = 32 * 2**20
# Decoded images waiting for a batch partner; beyond this the fullest bucket is run as it is.
BUFFER_PIXELS = 256 * 2**20
LIST_LIMIT = 10  # how many paths an error message lists before "and N more"
# The processes of a torchrun job finish at different times; the first must outwait the last.
GROUP_TIMEOUT = timedelta(days=7)


@dataclass
class RestoreOptions:
    task: str = "denoise"
    weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    tile: int | str = "auto"
    tile_overlap: int | None = None  # None = 32, or a quarter of a smaller --tile
    batch_size: int = 4
    workers: int = 0  # 0 = auto: I/O threads for reading and as many for writing
    format: str = "auto"  # auto = same, except JPEG inputs of the jpeg task become PNG
    quality: int = 95
    png_level: int = 1
    suffix: str = ""
    recursive: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    skip_existing: bool = False
    overwrite: bool = False
    report: Path | None = None
    dry_run: bool = False
    masks: Path | None = None
    mask_from: str | None = None  # "alpha"
    compile: str = "auto"  # auto | on | off (see inference.COMPILE_MODES)
    shard: str | None = None  # "K/N": restore part K of N (see shard.py); under torchrun, shared by its processes


@dataclass
class Job:
    source: Source
    output: Path
    exists: bool = False
    redo_empty: bool = False  # --skip-existing found a 0-byte file here (a killed write elsewhere): made again


@dataclass
class Plan:
    input: Path
    output: Path
    jobs: list[Job]  # to restore
    skipped: list[Job]  # output exists and --skip-existing
    existing: list[Job]  # output exists, neither --skip-existing nor --overwrite
    collisions: dict[Path, list[Source]]
    onto_inputs: list[Job]  # output path is an input file
    report_problem: str | None = None
    folder_problems: list[str] = field(default_factory=list)  # output folders that cannot be written
    entries: list[Job] = field(default_factory=list)  # every input in discovery order, whatever its fate

    def part(self, indices: list[int]) -> Plan:
        """The same plan for ``entries[i]`` only; the mapping's problems (collisions, onto inputs) stay whole."""
        keep = {id(self.entries[i]) for i in indices}
        return dataclasses.replace(self, entries=[self.entries[i] for i in sorted(indices)],
                                   jobs=[j for j in self.jobs if id(j) in keep],
                                   skipped=[j for j in self.skipped if id(j) in keep],
                                   existing=[j for j in self.existing if id(j) in keep])

    def problems(self) -> list[str]:
        """Why this plan must not run (usage errors, exit 2); empty when it may."""
        out = [self.report_problem] if self.report_problem else []
        out += self.folder_problems
        if self.onto_inputs:
            out.append("these outputs would replace input files; choose another OUTPUT or a --suffix: "
                       + _listing([str(j.output) for j in self.onto_inputs]))
        if self.collisions:
            out.append("several inputs would be written to the same output; rename them, use --format same "
                       "or --exclude: " + _listing([f"{o} <- {', '.join(str(s.path) for s in srcs)}"
                                                   for o, srcs in self.collisions.items()]))
        if self.existing:
            out.append(f"{len(self.existing)} output file(s) already exist; pass --skip-existing to resume "
                       f"or --overwrite to replace them: " + _listing([str(j.output) for j in self.existing]))
        return out


@dataclass
class RestoreSummary:
    restored: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    exit_code: int = EXIT_OK

    def line(self) -> str:
        mps = self.megapixels / self.seconds if self.seconds > 0 else 0.0
        return (f"restored {self.restored}, skipped {self.skipped}, failed {self.failed} "
                f"in {self.seconds:.1f} s ({mps:.2f} MP/s)")


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:LIST_LIMIT])
    return shown + (f"; and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else "")


def _is_within(path: Path, folder: Path) -> bool:
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_options(opts: RestoreOptions) -> None:
    """Usage errors that need no file system work."""
    from .tasks import get_task

    task = get_task(opts.task)
    opts.format = {"jpeg": "jpg", "tif": "tiff"}.get(opts.format, opts.format)
    if opts.format not in OUTPUT_FORMATS:
        raise IraeError(f"--format {opts.format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if opts.skip_existing and opts.overwrite:
        raise IraeError("--skip-existing and --overwrite contradict each other; pass one")
    if opts.batch_size < 1:
        raise IraeError(f"--batch-size must be at least 1, not {opts.batch_size}")
    if opts.workers < 0:
        raise IraeError(f"--workers must be 0 (auto) or more, not {opts.workers}")
    if not 1 <= opts.quality <= 100:
        raise IraeError(f"--quality must be 1-100, not {opts.quality}")
    if not 0 <= opts.png_level <= 9:
        raise IraeError(f"--png-level must be 0-9, not {opts.png_level}")
    if os.sep in opts.suffix or "/" in opts.suffix:
        raise IraeError(f"--suffix {opts.suffix!r} must not contain a path separator")
    if opts.mask_from not in (None, "alpha"):
        raise IraeError(f"--mask-from {opts.mask_from!r}: only 'alpha' is supported")
    if task.needs_mask:
        if opts.masks is None and opts.mask_from is None:
            raise IraeError(f"task {task.name!r} needs masks: pass --masks DIR (same relative paths, "
                            f"255 = missing) or --mask-from alpha")
        if opts.masks is not None and opts.mask_from is not None:
            raise IraeError("pass either --masks or --mask-from, not both")
        if opts.masks is not None and not Path(opts.masks).is_dir():
            raise IraeError(f"--masks {opts.masks}: no such folder")
    elif opts.masks is not None or opts.mask_from is not None:
        raise IraeError(f"--masks/--mask-from only apply to --task inpaint, not {task.name!r}")
    if opts.shard is not None:
        parse_shard(opts.shard)


def _output_ext(src: Path, opts: RestoreOptions) -> str:
    if opts.format == "auto":
        # Re-encoding a de-blocked image as JPEG would put the artefacts back.
        if opts.task == "jpeg" and src.suffix.lower() in (".jpg", ".jpeg"):
            return ".png"
        return output_suffix(src.suffix, "same")
    return output_suffix(src.suffix, opts.format)


def plan_restore(input: str | Path, output: str | Path, opts: RestoreOptions) -> Plan:
    """Map inputs to outputs and find collisions and existing outputs; reads no pixels."""
    check_options(opts)
    input, output = Path(input), Path(output)
    if not input.exists():
        raise IraeError(f"{input}: no such file or folder")
    if input.is_file():
        sources = [Source(input, Path(input.name))]
        if output.suffix.lower() in PIL_FORMAT and not output.is_dir():
            targets = [output]
        else:
            if (output.exists() or output.is_symlink()) and not output.is_dir():
                raise IraeError(f"OUTPUT {output} exists and is neither a folder nor an image file; give a folder, "
                                f"or an image file name such as {output.with_suffix('.png')}")
            targets = [output / f"{input.stem}{opts.suffix}{_output_ext(input, opts)}"]
    else:
        if output.exists() and not output.is_dir():
            raise IraeError(f"{output}: exists and is not a folder; OUTPUT must be a folder for a folder INPUT")
        if os.path.realpath(output) == os.path.realpath(input):
            raise IraeError(f"OUTPUT {output} is the INPUT folder; irae never writes into its input — "
                            f"choose another folder (a subfolder such as {input / 'restored'} is fine)")
        skip = [output] + ([opts.masks] if opts.masks is not None else [])
        sources = discover(input, recursive=opts.recursive, include=opts.include or None,
                           exclude=opts.exclude or None, skip=skip)
        if not sources:
            hint = "" if opts.recursive else " (subfolders were not searched: drop -R)"
            raise IraeError(f"{input}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))}){hint}")
        targets = [output / s.rel.parent / f"{s.rel.stem}{opts.suffix}{_output_ext(s.path, opts)}"
                   for s in sources]
    inputs_real = {os.path.realpath(s.path) for s in sources}
    by_output: dict[Path, list[Source]] = defaultdict(list)
    jobs, skipped, existing, onto, entries = [], [], [], [], []
    for s, t in zip(sources, targets):
        by_output[t].append(s)
        job = Job(s, t, exists=t.exists() or t.is_symlink())
        entries.append(job)
        if os.path.realpath(t) in inputs_real:
            onto.append(job)
        elif job.exists and opts.skip_existing and _empty_file(t):
            job.redo_empty = True  # an empty file is no finished output: make it again
            jobs.append(job)
        elif job.exists and opts.skip_existing:
            skipped.append(job)
        elif job.exists and not opts.overwrite:
            existing.append(job)
        else:
            jobs.append(job)
    collisions = {t: srcs for t, srcs in by_output.items() if len(srcs) > 1}
    plan = Plan(input, output, jobs, skipped, existing, collisions, onto, entries=entries)
    plan.report_problem = _report_problem(input, opts, by_output, inputs_real)
    folders = sorted({j.output.parent for j in jobs})
    problems = [p for p in (folder_problem(f) for f in folders) if p]
    problems = sorted(set(problems))
    if len(problems) > 1:
        problems = [f"{len(problems)} output folders cannot be written: " + _listing(problems)]
    plan.folder_problems = problems
    return plan


def _empty_file(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size == 0
    except OSError:
        return False


def _report_problem(input: Path, opts: RestoreOptions, outputs: dict, inputs_real: set) -> str | None:
    """The --report file is the user's too: never inside INPUT, never an image, never silently replaced."""
    if opts.report is None:
        return None
    report = Path(opts.report)
    if report.is_dir():
        return f"--report {report} is a folder; give a file name such as {report / 'report.jsonl'}"
    real = os.path.realpath(report)
    if real in inputs_real or real in {os.path.realpath(o) for o in outputs}:
        return f"--report {report} is one of the images; choose another file name"
    if input.is_dir() and os.path.commonpath([real, os.path.realpath(input)]) == os.path.realpath(input):
        return f"--report {report} lies inside the INPUT folder; irae never writes into its input"
    if report.exists() and not (opts.overwrite or opts.skip_existing):
        return (f"--report {report} already exists; pass --overwrite to replace it, --skip-existing to add this "
                f"run's lines to it, or choose another file")
    parts = leftover_parts(report)
    if parts and not (opts.overwrite or opts.skip_existing):
        return (f"--report {report}: {parts[0]}{f' and {len(parts) - 1} more' if len(parts) > 1 else ''} were left "
                f"by an interrupted torchrun run; pass --skip-existing to add their lines to the report or "
                f"--overwrite to discard them")
    if (report.exists() or report.is_symlink()) and not report.is_file():
        return f"--report {report} is not a regular file; give a file name"
    if report.exists() and not os.access(report, os.W_OK):
        return f"--report {report} is not writable (permission denied); choose another file"
    problem = folder_problem(report.parent, "--report folder")
    return problem


# --- running ---------------------------------------------------------------------------------------

@dataclass
class _Item:
    """One image on its way through the pipeline."""
    job: Job
    x: object = None  # (C, H, W) float tensor
    meta: ImageMeta | None = None
    mask: object = None  # (1, H, W) bool tensor
    blob: tuple | None = None  # (bytes, meta, shape) for the CUDA JPEG decoder
    error: str | None = None
    seconds: float = 0.0
    tiles: int = 0
    notes: list[str] = field(default_factory=list)
    hw: tuple[int, int] | None = None  # (H, W), kept after the pixels are released
    reported: bool = False  # its report line and count are done (Ctrl-C must neither lose nor repeat them)


class _Reporter:
    """Counts, progress bar, one-line failures on stderr and the JSONL report; main thread only."""

    def __init__(self, total: int, report: Path | None, append: bool, progress: bool, quiet: bool, err: TextIO,
                 common: dict, label: str = "restoring") -> None:
        self.summary = RestoreSummary()
        self.err = err
        self.quiet = quiet
        self.common = common
        self.started = time.perf_counter()
        self.report = None
        self.report_path = report
        self.report_error: str | None = None
        if report is not None:
            path = report  # this process's part of the report under torchrun
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # Unbuffered: each line goes out whole or, on a full disk, is cut back off (see _write).
                self.report = open(path, "ab" if append else "wb", buffering=0)
                if append and self.report.tell() > 0:
                    with open(path, "rb") as f:
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":  # an earlier run killed mid-line: keep its lines whole
                            self.report.write(b"\n")
                            self.report.flush()
            except OSError as e:
                raise IraeError(f"--report {path}: cannot write ({e.strerror or e})") from None
        self.progress = None
        if progress and not quiet:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn(label, markup=False), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("images  {task.fields[mps]:.2f} MP/s"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(file=err), transient=True)
            self.progress.start()
            self.bar = self.progress.add_task("restore", total=total, mps=0.0)

    def say(self, line: str) -> None:
        line = one_line(line)
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.err, flush=True)

    def _write(self, record: dict) -> None:
        if self.report is None:
            return
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace"))
        start = None
        try:
            start = self.report.tell()
            while data:
                data = data[self.report.write(data):]
        except OSError as e:
            # Disk full (or gone): keep the report's complete lines, cut a partial one, and go on restoring.
            try:
                if start is not None:
                    os.ftruncate(self.report.fileno(), start)
            except OSError:
                pass
            try:
                self.report.close()
            except OSError:
                pass
            self.report = None
            self.report_error = (f"--report {self.report_path}: cannot write ({io_reason(e)}); the report stops "
                                 f"here, restoring goes on and the run will exit 1")
            self.say(f"irae: error: {self.report_error}")

    def skipped(self, job: Job) -> None:
        self.summary.skipped += 1
        self._write({"input": str(job.source.path), "output": str(job.output), "status": "skipped",
                     "error": None, "reason": "output exists (--skip-existing)"})

    def done(self, item: _Item) -> None:
        if item.reported:
            return
        item.reported = True
        record = {"input": str(item.job.source.path), "output": str(item.job.output),
                  "status": "failed" if item.error else "ok", "error": item.error}
        if item.hw is not None:
            h, w = item.hw
            record["size"] = [int(w), int(h)]
            if not item.error:
                self.summary.megapixels += w * h / 1e6
        record.update(seconds=round(item.seconds, 4), tiles=item.tiles, **self.common)
        if item.notes:
            record["notes"] = item.notes
        self._write(record)
        if item.error:
            self.summary.failed += 1
            self.say(f"irae: failed: {item.error}")
        else:
            self.summary.restored += 1
        if self.progress is not None:
            elapsed = time.perf_counter() - self.started
            self.progress.update(self.bar, advance=1, mps=self.summary.megapixels / max(elapsed, 1e-9))

    def close(self) -> RestoreSummary:
        if self.progress is not None:
            self.progress.stop()
        if self.report is not None:
            try:
                self.report.close()
            except OSError as e:
                self.report_error = f"--report {self.report_path}: cannot write ({io_reason(e)})"
                self.say(f"irae: error: {self.report_error}")
        s = self.summary
        s.seconds = time.perf_counter() - self.started
        s.exit_code = EXIT_SOME_FAILED if s.failed or self.report_error else EXIT_OK
        return s


def _read(job: Job, task_needs_mask: bool, opts: RestoreOptions, gpu_jpeg: bool) -> _Item:
    from .imageio import jpeg_for_gpu, mask_from_alpha, read_image, read_mask

    item = _Item(job)
    t0 = time.perf_counter()
    path = job.source.path
    try:
        if gpu_jpeg and path.suffix.lower() in (".jpg", ".jpeg"):
            item.blob = jpeg_for_gpu(path)
            if item.blob is not None:
                return item
        item.x, item.meta = read_image(path)
        if task_needs_mask:
            hw = tuple(item.x.shape[-2:])
            if opts.masks is not None:
                mask_path = find_mask(opts.masks, job.source.rel)
                if mask_path is None:
                    raise ImageError(f"{path}: no mask {Path(opts.masks) / job.source.rel.with_suffix('.*')}; "
                                     f"masks need the same relative path (any image extension)")
                item.mask = read_mask(mask_path, hw, image=path)
            else:
                item.mask = mask_from_alpha(item.meta, path)
                item.meta.alpha = None  # the holes are filled now: the output is opaque
    except ImageError as e:
        item.error = str(e)
    except MemoryError:
        item.error = f"{path}: not enough memory to decode it"
    except Exception as e:  # noqa: BLE001 - a decoder bug on one odd file must not end a long run
        item.error = f"{path}: cannot decode image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    item.seconds = time.perf_counter() - t0
    return item


def _gpu_jpeg_decode(restorer, needs_mask: bool) -> bool:
    """Whether plain JPEGs are decoded in batches with nvJPEG (CUDA, and a task without masks)."""
    return restorer.device.type == "cuda" and not needs_mask


def _decode_gpu_jpegs(items: list[_Item], device) -> list[_Item]:
    """Decode the collected JPEG blobs in one nvJPEG batch; anything it cannot do goes through Pillow.

    Runs on its own thread (the main thread keeps the model busy meanwhile); the decoded
    uint8 pixels become float here, on the host.
    """
    from .imageio import decode_jpegs_cuda, read_image

    t0 = time.perf_counter()
    try:
        decoded = decode_jpegs_cuda([it.blob[0] for it in items], [it.blob[2][0] == 1 for it in items], device)
    except Exception:  # noqa: BLE001 - nvJPEG refuses some valid files; Pillow is the reference decoder
        decoded = [None] * len(items)
    share = (time.perf_counter() - t0) / max(len(items), 1)
    for it, x in zip(items, decoded):
        _, meta, shape = it.blob
        it.blob = None
        it.seconds += share
        if x is not None and tuple(x.shape) == tuple(shape):
            it.x, it.meta = x.float().div_(255.0), meta
            continue
        t1 = time.perf_counter()
        try:
            it.x, it.meta = read_image(it.job.source.path)
        except ImageError as e:
            it.error = str(e)
        except Exception as e:  # noqa: BLE001 - one undecodable file must not end a long run
            it.error = f"{it.job.source.path}: cannot decode ({type(e).__name__}: {e})"
        it.seconds += time.perf_counter() - t1
    return items


def _write(item: _Item, y, opts: RestoreOptions) -> _Item:
    from .imageio import encode_image
    from .files import atomic_write_bytes

    t0 = time.perf_counter()
    try:
        data = encode_image(y, item.meta, item.job.output.suffix, quality=opts.quality,
                            png_compress_level=opts.png_level)
        replace = opts.overwrite
        if item.job.redo_empty:  # replace the empty file found by the plan, nothing that has appeared since
            replace = _empty_file(item.job.output) or not (item.job.output.exists() or item.job.output.is_symlink())
            item.notes.append("replaced an empty (0-byte) output")
        atomic_write_bytes(item.job.output, data, overwrite=replace)
    except ImageError as e:
        msg = str(e)
        item.error = msg if str(item.job.output) in msg else f"{item.job.output}: {msg}"
    except MemoryError:
        item.error = f"{item.job.output}: not enough memory to encode it"
    except Exception as e:  # noqa: BLE001 - one file that cannot be encoded must not end a long run
        item.error = f"{item.job.output}: cannot encode ({type(e).__name__}: {e}); try another --format"
    item.seconds += time.perf_counter() - t0
    return item


def describe_plan(plan: Plan, opts: RestoreOptions, weights_label: str) -> list[str]:
    """The --dry-run listing: every input -> output, skips, problems and the batches it would run."""
    lines = [f"plan: restore {len(plan.jobs)} image(s), skip {len(plan.skipped)}; task {opts.task}, "
             f"weights {weights_label}"]
    lines += [f"  {j.source.path} -> {j.output}" + (" (replaces an empty file)" if j.redo_empty else "")
              for j in plan.jobs]
    lines += [f"  skip {j.source.path} ({j.output} exists)" for j in plan.skipped]
    lines += [f"  exists {j.output} <- {j.source.path}" for j in plan.existing]
    lines += [f"  collision {o} <- {', '.join(str(s.path) for s in srcs)}" for o, srcs in plan.collisions.items()]
    lines += [f"  onto input {j.output}" for j in plan.onto_inputs]
    sizes: dict[tuple, int] = defaultdict(int)
    unreadable = 0
    for j in plan.jobs:
        shape = image_size(j.source.path)
        if shape is None:
            unreadable += 1
        else:
            sizes[shape] += 1
    for (c, h, w), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        per = max(1, min(opts.batch_size, BATCH_PIXELS // max(h * w, 1)))
        lines.append(f"  batches: {-(-n // per)} of up to {per} x {w}x{h} {'gray' if c == 1 else 'RGB'} "
                     f"({n} image(s))")
    if unreadable:
        lines.append(f"  unreadable header: {unreadable} image(s) (would be reported as failed)")
    return lines


WORKLOAD_SAMPLE = 64  # headers read to estimate a run's megapixels (for --compile auto)


def _workload_megapixels(jobs: list[Job]) -> float | None:
    """The run's megapixels, from the headers of an evenly spread sample of its images."""
    if not jobs:
        return None
    stride = max(1, len(jobs) // WORKLOAD_SAMPLE)
    sizes = [n for n in (image_pixels(j.source.path) for j in jobs[::stride]) if n]
    return len(jobs) * sum(sizes) / len(sizes) / 1e6 if sizes else None


def _load_restorer(opts: RestoreOptions, jobs: list[Job] | None = None, device=None):
    from .inference import Restorer
    from .tasks import get_task
    from .weights import default_weights_for, load_weights

    name = opts.weights or default_weights_for(opts.task)
    if name is None:
        raise IraeError(f"no shipped weights exist yet for task {opts.task!r}; train some with "
                        f"'irae train --task {opts.task} ... --out w.safetensors' and pass --weights w.safetensors")
    loaded = load_weights(name, device="cpu", expect_task=opts.task)
    task = get_task(opts.task)
    params = task.params_for_weights(loaded.task_params)
    restorer = Restorer(loaded.model, task, task_params=params, device=device or opts.device, dtype=opts.dtype,
                        tile=opts.tile, tile_overlap=opts.tile_overlap, batch_size=opts.batch_size,
                        compile=opts.compile,
                        workload_megapixels=_workload_megapixels(jobs) if opts.compile == "auto" and jobs else None)
    return restorer, loaded


def restore(input: str | Path, output: str | Path, opts: RestoreOptions, *, progress: bool = False,
            quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> RestoreSummary:
    """Restore ``input`` (a file or folder) into ``output``; see the module docstring.

    Raises ``IraeError`` (exit 2) before any work for usage problems; per-file
    problems are reported and counted, and the summary's ``exit_code`` is 1
    when any file failed.

    Under torchrun every process plans the whole run, they check that their plans agree,
    and each restores its pixel-balanced part on its own device; a usage error is said once
    (by process 0) and every process exits with the worst code of all.  ``opts.shard``
    restricts the run to one part first (see shard.py).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    # Only small Python objects travel between the processes: gloo, also when they restore on GPUs.
    ctx = init_distributed(None, GROUP_TIMEOUT)
    plan, failure = None, None
    try:
        device = rank_device(opts.device, world=ctx.world, local_rank=ctx.local_rank)
        plan = plan_restore(input, output, opts)
    except IraeError as e:
        failure = e
    ctx.agree(failure, _plan_digest(plan) if ctx.active and plan is not None else None)
    shard = parse_shard(opts.shard) if opts.shard is not None else None
    job_plan, parts, pixels = _split(plan, shard, ctx)
    problems = job_plan.problems()
    if opts.dry_run:
        return _dry_run(job_plan, parts, pixels, problems, opts, shard, ctx, out, err)
    if problems:
        ctx.fail(problems[0] if len(problems) == 1 else " | ".join(problems))
    plan = parts[ctx.rank]
    report = Path(opts.report) if opts.report is not None else None
    try:
        if device.type == "cuda" and ctx.active:
            import torch

            torch.cuda.set_device(device)
        restorer, loaded = _load_restorer(opts, plan.jobs, device)
        if report is not None and ctx.main:
            settle_leftovers(report, keep=opts.skip_existing)
            if ctx.active:
                _start_report(report, opts)
    except IraeError as e:
        failure = e
    ctx.agree(failure)
    if report is not None and ctx.active:
        report, append = part_path(report, ctx.rank), False
    else:
        # --skip-existing resumes a run: its lines go after the earlier run's, nothing is lost.
        append = report is not None and opts.skip_existing and report.is_file()
    label = f"restoring (process {ctx.rank} of {ctx.world})" if ctx.active else "restoring"
    summary = _run(plan, restorer, loaded, opts, report, append, progress=progress and ctx.main, quiet=quiet,
                   err=err, label=label)
    of = f" (shard {shard})" if shard is not None else ""
    if not ctx.active:
        if not quiet:
            print(summary.line() + of, file=err)
        return summary
    total = _total(ctx.all_gather(summary))  # also: every part of the report is complete
    code = summary.exit_code
    if ctx.main:
        if opts.report is not None:
            problem = join_parts(Path(opts.report), [part_path(Path(opts.report), r) for r in range(ctx.world)])
            if problem:
                print(f"irae: error: {one_line(problem)}", file=err)
                code = EXIT_SOME_FAILED
        if not quiet:  # before the last collective: once one process exits non-zero, torchrun stops the others
            print(f"{total.line()} by {ctx.world} processes{of}", file=err, flush=True)
    total.exit_code = ctx.worst(code)
    ctx.close()
    return total


def _plan_digest(plan: Plan) -> str:
    """What every process of a torchrun job must agree on: each input, its output and its fate, and the problems."""
    fate = {id(j): kind for kind, jobs in (("do", plan.jobs), ("skip", plan.skipped), ("exists", plan.existing),
                                            ("onto", plan.onto_inputs)) for j in jobs}
    h = hashlib.sha256()
    for j in plan.entries:
        h.update(f"{j.source.path}\0{j.output}\0{fate.get(id(j))}\0{j.redo_empty}\n".encode("utf-8", "surrogateescape"))
    for p in plan.problems():
        h.update(p.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _split(plan: Plan, shard: Shard | None, ctx: Dist) -> tuple[Plan, list[Plan], dict[int, int]]:
    """This run's plan (``--shard``'s part of it), its parts for the processes, and each entry's pixels by id."""
    if shard is None and not ctx.active:
        return plan, [plan], {}
    paths = [j.source.path for j in plan.entries]
    pixels = [0] * len(paths)
    # Each process reads every world-th header; all of them then split the same list the same way.
    for r, mine in enumerate(ctx.all_gather(header_pixels(paths[ctx.rank::ctx.world]))):
        pixels[r::ctx.world] = mine
    chosen = list(range(len(paths)))
    if shard is not None:
        chosen = split_by_pixels(pixels, shard.count)[shard.index]
    groups = split_by_pixels([pixels[i] for i in chosen], ctx.world)
    by_id = {id(plan.entries[i]): pixels[i] for i in chosen}
    return plan.part(chosen), [plan.part([chosen[i] for i in g]) for g in groups], by_id


def _dry_run(plan: Plan, parts: list[Plan], pixels: dict[int, int], problems: list[str], opts: RestoreOptions,
             shard: Shard | None, ctx: Dist, out: TextIO, err: TextIO) -> RestoreSummary:
    """Process 0 prints the plan (with how it is split); every process exits with the same code."""
    code = EXIT_USAGE if problems else EXIT_OK
    if ctx.main:
        try:
            _, loaded = _load_restorer(opts)
            label = f"{loaded.path} (sha256 {loaded.sha256[:12]})"
        except IraeError as e:
            label, problems, code = "(unusable)", [*problems, str(e)], EXIT_USAGE
        lines = describe_plan(plan, opts, label)
        split = [f"  shard {shard}: part {shard.index} of {shard.count}, balanced by pixels"] if shard else []
        if ctx.active:
            split += [f"  process {r} of {ctx.world}: restore {len(p.jobs)} image(s), "
                      f"{sum(pixels.get(id(j), 0) for j in p.jobs) / 1e6:.2f} MP" for r, p in enumerate(parts)]
        for line in lines[:1] + split + lines[1:]:
            print(one_line(line), file=out)
        for p in problems:
            print(f"irae: error: {one_line(p)}", file=err)
    return RestoreSummary(skipped=len(plan.skipped), exit_code=ctx.worst(code))


def _start_report(report: Path, opts: RestoreOptions) -> None:
    """Process 0 of a torchrun job: the report exists (appended to, or emptied) before the parts are added."""
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        open(report, "ab" if opts.skip_existing else "wb").close()
    except OSError as e:
        raise IraeError(f"--report {report}: cannot write ({io_reason(e)})") from None


def _total(summaries: list[RestoreSummary]) -> RestoreSummary:
    return RestoreSummary(restored=sum(s.restored for s in summaries), skipped=sum(s.skipped for s in summaries),
                          failed=sum(s.failed for s in summaries), seconds=max(s.seconds for s in summaries),
                          megapixels=sum(s.megapixels for s in summaries),
                          exit_code=max(s.exit_code for s in summaries))


def _run(plan: Plan, restorer, loaded, opts: RestoreOptions, report: Path | None, append: bool, *,
         progress: bool, quiet: bool, err: TextIO, label: str) -> RestoreSummary:
    """Restore ``plan.jobs`` and report ``plan.skipped``; the model is loaded and the plan checked."""
    # A run killed mid-write (SIGKILL, power loss) leaves hidden temp files: remove those of dead irae processes.
    stale = remove_stale_temp_files({j.output.parent for j in plan.jobs + plan.skipped if j.output.parent.is_dir()})
    if stale and not quiet:
        print(one_line(f"irae: note: removed {len(stale)} temporary file(s) an interrupted run left behind, e.g. "
                       f"{stale[0]}"), file=err)

    import torch

    common = {"device": str(restorer.device), "dtype": str(restorer.dtype).removeprefix("torch."),
              "weights_sha256": loaded.sha256}
    rep = _Reporter(len(plan.jobs), report, append, progress, quiet, err, common, label)
    previous_handler = set_warning_handler(rep.say)  # warnings (EXIF, masks) print above the progress bar
    for job in plan.skipped:
        rep.skipped(job)
    workers = opts.workers or max(1, min(4, os.cpu_count() or 1))
    needs_mask = restorer.task.needs_mask
    gpu_jpeg = _gpu_jpeg_decode(restorer, needs_mask)
    readers = ThreadPoolExecutor(workers, thread_name_prefix="irae-read")
    # nvJPEG batches decode on one thread of their own, one batch ahead of the model
    decoder = ThreadPoolExecutor(1, thread_name_prefix="irae-nvjpeg") if gpu_jpeg else None
    decodes: deque[Future] = deque()
    writers = ThreadPoolExecutor(workers, thread_name_prefix="irae-write")
    reads: deque[Future] = deque()
    writes: deque[Future] = deque()
    buckets: dict[tuple, list[_Item]] = defaultdict(list)
    blobs: list[_Item] = []
    ahead = 2 * workers + opts.batch_size
    todo = iter(plan.jobs)

    def drain_writes(limit: int) -> None:
        while len(writes) > limit:
            rep.done(writes[0].result())  # reported before it leaves the queue: Ctrl-C cannot lose it
            writes.popleft()

    def run_batch(items: list[_Item]) -> None:
        tiles0, notes0 = restorer.stats.tiles, len(restorer.stats.notes)
        t0 = time.perf_counter()
        try:
            x = torch.stack([it.x for it in items])
            masks = torch.stack([it.mask for it in items]) if needs_mask else None
            y = restorer(x, masks)
        except Exception as e:  # noqa: BLE001 - a batch that fails is reported per file; the run goes on
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            for it in items:
                it.error = f"{it.job.source.path}: restoring failed ({reason})"
                rep.done(it)
            return
        share = (time.perf_counter() - t0) / len(items)
        tiles = (restorer.stats.tiles - tiles0) // len(items)
        notes = restorer.stats.notes[notes0:]
        for it, yi in zip(items, y):
            it.seconds += share
            it.tiles = tiles or 1
            it.notes = list(notes)
            it.x = it.mask = None  # release the input pixels; the batch tensor goes with this frame
            writes.append(writers.submit(_write, it, yi, opts))
        drain_writes(2 * workers)

    def buffered_pixels() -> int:
        return sum(it.x.shape[-1] * it.x.shape[-2] for b in buckets.values() for it in b)

    def add(item: _Item) -> None:
        if item.error:
            rep.done(item)
            return
        item.hw = tuple(item.x.shape[-2:])
        key = tuple(item.x.shape)
        bucket = buckets[key]
        bucket.append(item)
        per = max(1, min(opts.batch_size, BATCH_PIXELS // max(key[-1] * key[-2], 1)))
        if len(bucket) >= per:
            run_batch(buckets.pop(key))
        elif buffered_pixels() > BUFFER_PIXELS:
            fullest = max(buckets, key=lambda k: len(buckets[k]))
            run_batch(buckets.pop(fullest))

    def drain_decodes(limit: int) -> None:
        """Add decoded batches: every finished one, and wait until at most ``limit`` are in flight."""
        while decodes and (len(decodes) > limit or decodes[0].done()):
            for it in decodes.popleft().result():
                add(it)

    def flush_blobs() -> None:
        if blobs:
            decodes.append(decoder.submit(_decode_gpu_jpegs, list(blobs), restorer.device))
            blobs.clear()
            drain_decodes(1)

    previous_sigterm = catch_sigterm()
    try:
        while True:
            while len(reads) < ahead:
                job = next(todo, None)
                if job is None:
                    break
                reads.append(readers.submit(_read, job, needs_mask, opts, gpu_jpeg))
            if not reads:
                break
            if decodes:
                drain_decodes(1)
            item = reads.popleft().result()
            if item.blob is not None:
                blobs.append(item)
                if len(blobs) >= opts.batch_size:
                    flush_blobs()
            else:
                add(item)
        flush_blobs()
        if decodes:
            drain_decodes(0)
        for key in list(buckets):
            run_batch(buckets.pop(key))
        drain_writes(0)
    finally:
        for f in reads:
            f.cancel()
        readers.shutdown(wait=True, cancel_futures=True)
        if decoder is not None:
            decoder.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)  # writes in flight finish (atomically) even on Ctrl-C
        for f in writes:  # ... and every file written, even during shutdown, gets its report line
            if f.done() and not f.cancelled() and f.exception() is None:
                rep.done(f.result())
        set_warning_handler(previous_handler)
        release_sigterm(previous_sigterm)
        summary = rep.close()
    return summary
