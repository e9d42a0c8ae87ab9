"""Run a checked plan: decode ahead on threads, restore images of equal size in batches, write behind on threads.

The device never waits on one file at a time, and memory stays bounded on huge
folders: a few reads in flight, at most ``BUFFER_PIXELS`` decoded pixels waiting
for a batch partner, and a few writes in flight.  Large images go one at a time
(the ``Restorer`` tiles them).  On CUDA, plain JPEGs are decoded in batches by
nvJPEG on a thread of their own.  Ctrl-C (and SIGTERM) let the writes in flight
finish, and every file written gets its report line.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import torch

from ..degradations import align_to_blocks, find_jpeg_grid, quality_to_tell
from ..errors import IraeError, one_line, set_warning_handler
from ..files import remove_stale_temp_files
from ..interrupts import catch_sigterm, held_interrupts, release_sigterm
from .auto import AutoModels
from .items import Item, _copy, _decode_gpu_jpegs, _read, _write
from .options import RestoreOptions, io_threads
from .plan import Job, Plan
from .report import Reporter, RestoreSummary

# A batch never holds more than this many pixels (large images go one at a time and are tiled).
BATCH_PIXELS = 32 * 2**20
# Decoded images waiting for a batch partner; beyond this the fullest bucket is run as it is.
BUFFER_PIXELS = 256 * 2**20


def images_per_batch(batch_size: int, height: int, width: int) -> int:
    return max(1, min(batch_size, BATCH_PIXELS // max(height * width, 1)))


def run_plan(plan: Plan, restorer, loaded, opts: RestoreOptions, report: Path | None, append: bool, *,
             progress: bool, quiet: bool, err: TextIO, label: str) -> RestoreSummary:
    """Restore ``plan.jobs`` and report ``plan.skipped``; the model is loaded (``AutoModels`` for --task auto:
    each task's model when a file first needs it) and the plan checked."""
    _remove_stale_temp_files(plan, quiet, err)
    if isinstance(restorer, AutoModels):
        common = {"device": str(restorer.device), **restorer.fields(None)}
    else:
        common = {"device": str(restorer.device), "dtype": str(restorer.dtype).removeprefix("torch."),
                  "backend": restorer.backend, "weights_sha256": loaded.sha256, "views": len(restorer.views)}
    reporter = Reporter(len(plan.jobs), report, append, progress, quiet, err, common, label,
                        routes=isinstance(restorer, AutoModels))
    previous_handler = set_warning_handler(reporter.say)  # warnings (EXIF, masks) print above the progress bar
    for job in plan.skipped:
        reporter.skipped(job)
    runner = _BatchRunner(restorer, opts, reporter)
    previous_sigterm = catch_sigterm()
    try:
        runner.run(plan.jobs)
    finally:
        runner.close()
        set_warning_handler(previous_handler)
        release_sigterm(previous_sigterm)
        summary = reporter.close()
    return summary


def _remove_stale_temp_files(plan: Plan, quiet: bool, err: TextIO) -> None:
    """A run killed mid-write (SIGKILL, power loss) leaves hidden temp files: remove those of dead irae processes."""
    stale = remove_stale_temp_files({j.output.parent for j in plan.jobs + plan.skipped if j.output.parent.is_dir()})
    if stale and not quiet:
        print(one_line(f"irae: note: removed {len(stale)} temporary file(s) an interrupted run left behind, e.g. "
                       f"{stale[0]}"), file=err)


def _gpu_jpeg_decode(restorer, needs_mask: bool) -> bool:
    """Whether plain JPEGs are decoded in batches with nvJPEG (CUDA, a task without masks, not --task auto:
    its models load on demand, so there is no device to decode onto before the first route)."""
    return not isinstance(restorer, AutoModels) and restorer.device.type == "cuda" and not needs_mask


class _BatchRunner:
    """The reader, nvJPEG and writer pools, and the images between them; main thread only.

    ``buckets`` hold decoded images by shape until a batch is full; ``blobs`` hold JPEG
    bytes until an nvJPEG batch is full; ``reads``, ``decodes`` and ``writes`` are the
    futures in flight, oldest first, so results are reported in a steady order.
    """

    def __init__(self, restorer, opts: RestoreOptions, reporter: Reporter) -> None:
        self.router = restorer if isinstance(restorer, AutoModels) else None
        self.restorer = None if self.router else restorer
        self.opts = opts
        self.reporter = reporter
        self.workers = io_threads(opts.workers)
        self.needs_mask = False if self.router else restorer.task.needs_mask
        self.gpu_jpeg = _gpu_jpeg_decode(restorer, self.needs_mask)
        # a JPEG model needs each header-less file's block grid, and one conditioned on the quality its
        # quality, from its pixels: the readers find them
        self.finds_grid = self.restorer is not None and restorer.task.grid > 1
        # JPEGs above the quality these weights improve are kept as they are (Task.passes_through)
        self.max_quality = restorer.task_params.get("max_quality") \
            if self.restorer is not None and restorer.task.name == "jpeg" else None
        self.readers = ThreadPoolExecutor(self.workers, thread_name_prefix="irae-read")
        # nvJPEG batches decode on one thread of their own, one batch ahead of the model
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="irae-nvjpeg") if self.gpu_jpeg else None
        self.writers = ThreadPoolExecutor(self.workers, thread_name_prefix="irae-write")
        self.reads: deque[Future] = deque()
        self.decodes: deque[Future] = deque()
        self.writes: deque[Future] = deque()
        self.buckets: dict[tuple, list[Item]] = defaultdict(list)
        self.blobs: list[Item] = []

    def run(self, jobs: list[Job]) -> None:
        """Restore ``jobs``, reading a few ahead of the model; ``close`` must follow, also after an exception."""
        ahead = 2 * self.workers + self.opts.batch_size
        todo = iter(jobs)
        while True:
            while len(self.reads) < ahead and (job := next(todo, None)) is not None:
                self.reads.append(self.readers.submit(_read, job, self.needs_mask, self.opts, self.gpu_jpeg,
                                                      self.finds_grid))
            if not self.reads:
                break
            if self.decodes:
                self._drain_decodes(1)
            item = self.reads.popleft().result()
            if item.blob is not None:
                self.blobs.append(item)
                if len(self.blobs) >= self.opts.batch_size:
                    self.flush_blobs()
            else:
                self.add(item)
        self.finish()

    def add(self, item: Item) -> None:
        """Put a decoded image in the bucket of its shape; run the bucket when full, or when memory is short."""
        if item.error or item.skipped:
            self.reporter.done(item)
            return
        item.hw = tuple(item.x.shape[-2:])
        if self.router is not None:
            if not self._routed(item):
                return
            restorer = self.router.restorer(item.route.task)
        elif self._passed_through(item):
            return
        else:
            restorer = self.restorer
        if self._lacks_quality(item, restorer):
            return
        self._align_blocks(item, restorer)
        key = (item.route.task if item.route else None, *item.x.shape)
        bucket = self.buckets[key]
        bucket.append(item)
        if len(bucket) >= images_per_batch(self.opts.batch_size, key[-2], key[-1]):
            self.run_batch(self.buckets.pop(key))
        elif self._buffered_pixels() > BUFFER_PIXELS:
            fullest = max(self.buckets, key=lambda k: len(self.buckets[k]))
            self.run_batch(self.buckets.pop(fullest))

    def _passed_through(self, item: Item) -> bool:
        """A JPEG above the quality these weights improve is written as it is (Task.passes_through)."""
        quality = item.meta.jpeg_quality  # read with the pixels, on either decoder's path
        if not self.restorer.task.passes_through(self.restorer.task_params, quality):
            return False
        item.notes.append(f"kept as it is: JPEG quality {quality} is above {self.max_quality}, "
                          f"the highest these weights improve")
        self._hand_to_writers(_write, item, item.x, self.opts)
        return True

    def _lacks_quality(self, item: Item, restorer) -> bool:
        """Weights conditioned on the JPEG quality are told each file's: --input-quality, else its header's,
        else the estimate from its pixels (a PNG of a decoded JPEG); a file with none fails with what to do."""
        if not restorer.needs_given_level:
            return False
        quality, source = quality_to_tell(self.opts.input_quality, item.meta.jpeg_quality,
                                          lambda: _pixel_grid(item)[0])
        if quality is None:
            item.error = (f"{item.job.source.path}: neither its header nor its pixels show the JPEG quality "
                          f"these weights are conditioned on; pass --input-quality Q, the quality it was saved "
                          f"at, or restore it with blind weights (--weights irae-jpeg-medium-blind)")
            self.reporter.done(item)
            return True
        item.extra.update(model_quality=int(quality), model_quality_source=source)
        return False

    @staticmethod
    def _align_blocks(item: Item, restorer) -> None:
        """An image whose 8x8 JPEG blocks do not start at its corner — a JPEG turned upright by its EXIF
        orientation, a header-less file cut from a decoded JPEG (a crop, part of a screenshot) — is padded
        at the top and left so that they do, as in every JPEG the model learnt on (off it the default loses
        0.20 dB at quality 10 on held-out photos, 0.07 at 40; training/jpeg/offgrid.txt); the rows and
        columns put before it are cut off the result."""
        if restorer.task.grid == 1:
            return
        item.x, item.pad, grid = align_to_blocks(item.x, item.meta.header_grid, lambda: _pixel_grid(item)[1])
        if item.pad != (0, 0):
            item.extra["jpeg_grid"] = list(grid)

    def _levels(self, restorer, x: torch.Tensor, items: list[Item]) -> torch.Tensor | None:
        """A conditioned model's level for each image: the JPEG quality decided as the file arrived, or
        the sigma given (--sigma) or estimated."""
        if not getattr(restorer, "conditioned", False):
            return None
        if restorer.needs_given_level:  # each file's, decided as it arrived (_lacks_quality)
            return torch.tensor([float(it.extra["model_quality"]) for it in items])
        return restorer.levels_for(x, self.opts.sigma)

    def _told(self, restorer, level: float) -> dict:
        """The report's fields for what a conditioned model was told of one file (a quality's are in already)."""
        if restorer.needs_given_level:
            return {}
        return {"model_sigma": round(level, 3), "model_sigma_source": "estimated" if self.opts.sigma is None
                else "given"}

    def _routed(self, item: Item) -> bool:
        """--task auto: route the file; True when it goes on to a model, False when it is copied (or its
        model cannot be loaded, which fails it)."""
        item.route = self.router.route(item.job, item.x)
        item.extra.update(item.route.fields())
        if item.route.task is None:
            item.x = None
            item.extra.update(self.router.fields(None))
            self._hand_to_writers(_copy, item, self.opts)
            return False
        try:
            self.router.restorer(item.route.task)
        except IraeError as e:
            item.error = f"{item.job.source.path}: {item.route.describe()}, but its model cannot be loaded: {e}"
            self.reporter.done(item)
            return False
        item.extra.update(self.router.fields(item.route.task))
        return True

    def _buffered_pixels(self) -> int:
        return sum(it.x.shape[-1] * it.x.shape[-2] for b in self.buckets.values() for it in b)

    def flush_blobs(self) -> None:
        """Send the collected JPEG bytes to nvJPEG as one batch."""
        if self.blobs:
            self.decodes.append(self.decoder.submit(_decode_gpu_jpegs, list(self.blobs), self.restorer.device))
            self.blobs.clear()
            self._drain_decodes(1)

    def _drain_decodes(self, limit: int) -> None:
        """Add decoded batches: every finished one, and wait until at most ``limit`` are in flight."""
        while self.decodes and (len(self.decodes) > limit or self.decodes[0].done()):
            for it in self.decodes.popleft().result():
                self.add(it)

    def run_batch(self, items: list[Item]) -> None:
        """Restore images of one shape together and hand them to the writers; a failed batch fails its files."""
        restorer = self.router.restorer(items[0].route.task) if self.router else self.restorer
        stats = restorer.stats
        tiles0, notes0 = stats.tiles, len(stats.notes)
        t0 = time.perf_counter()
        try:
            x = _batch([it.x for it in items])
            masks = _batch([it.mask for it in items]) if self.needs_mask else None
            levels = self._levels(restorer, x, items)
            y = restorer(x, masks, levels)
        except Exception as e:  # noqa: BLE001 - a batch that fails is reported per file; the run goes on
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            for it in items:
                it.error = f"{it.job.source.path}: restoring failed ({reason})"
                self.reporter.done(it)
            return
        share = (time.perf_counter() - t0) / len(items)
        tiles = (stats.tiles - tiles0) // len(items)
        notes = stats.notes[notes0:]
        for i, (it, yi) in enumerate(zip(items, y)):
            if levels is not None:  # what a conditioned model was told, and where it came from
                it.extra.update(self._told(restorer, float(levels[i])))
            it.seconds += share
            it.tiles = tiles or 1
            it.notes = list(notes)
            it.x = it.mask = None  # release the input pixels; the batch tensor goes with this frame
            yi = yi[..., it.pad[0]:, it.pad[1]:]
            self._hand_to_writers(_write, it, yi, self.opts)
        self.drain_writes(2 * self.workers)

    def _hand_to_writers(self, fn, *args) -> None:
        # held: a Ctrl-C after submit but before the append would write a file that close() never reports
        with held_interrupts():
            self.writes.append(self.writers.submit(fn, *args))

    def drain_writes(self, limit: int) -> None:
        """Report finished writes, oldest first, until at most ``limit`` are in flight."""
        while len(self.writes) > limit:
            self.reporter.done(self.writes[0].result())  # reported before it leaves the queue: Ctrl-C cannot lose it
            self.writes.popleft()

    def finish(self) -> None:
        """No more inputs: decode the last JPEGs, run the partly filled buckets, wait for every write."""
        self.flush_blobs()
        if self.decodes:
            self._drain_decodes(0)
        for key in list(self.buckets):
            self.run_batch(self.buckets.pop(key))
        self.drain_writes(0)

    def close(self) -> None:
        """Stop the pools; writes in flight finish (atomically), also on Ctrl-C, and each gets its report line."""
        for f in self.reads:
            f.cancel()
        self.readers.shutdown(wait=True, cancel_futures=True)
        if self.decoder is not None:
            self.decoder.shutdown(wait=True, cancel_futures=True)
        self.writers.shutdown(wait=True)
        for f in self.writes:
            if f.done() and not f.cancelled() and f.exception() is None:
                self.reporter.done(f.result())


def _pixel_grid(item: Item) -> tuple:
    """The JPEG (quality, (top, left)) a header-less file's pixels show: the readers' when they looked."""
    if item.pixel_grid is None:
        item.pixel_grid = find_jpeg_grid(item.x)
    return item.pixel_grid


def _batch(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The batch of equal-shaped tensors; one alone (every large image) is a view, not a copy of its pixels."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
