"""One image's way through a run: read (or collect its JPEG bytes for nvJPEG), decode, and encode and write.

These run on worker threads.  Whatever goes wrong with one file becomes ``item.error``
(one report line and one ``failed``), never an exception that would end a long run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..degradations import find_jpeg_grid
from ..errors import ImageError
from ..files import OutputExists, atomic_write_bytes
from ..gpu_jpeg import jpeg_for_gpu
from ..imageio import ImageMeta, image_pixels, read_image, refuse_damaged_jpeg
from ..imagewrite import encode_image
from ..maskio import find_mask, mask_from_alpha, read_mask
from ..memory import available_bytes, gigabytes, restore_bytes
from ..pixels import from_levels_u8
from .options import RestoreOptions
from .plan import Job, empty_file


@dataclass
class Item:
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
    skipped: str | None = None  # why it counts as skipped after all: its output appeared (--skip-existing)
    route: object = None  # --task auto: its routing.Route
    extra: dict = field(default_factory=dict)  # report keys of its own (--task auto: route, model)
    # (quality, (top, left)) of the JPEG grid the pixels of a header-less file show (find_jpeg_grid): found
    # on the reader thread when the run asks; None until looked for
    pixel_grid: tuple | None = None
    pad: tuple[int, int] = (0, 0)  # rows and columns put before the image to align its JPEG blocks


def _read(job: Job, task_needs_mask: bool, opts: RestoreOptions, gpu_jpeg: bool,
          find_grid: bool = False) -> Item:
    """Decode one file (and its mask); ``find_grid``: a file without JPEG tables also gets the JPEG quality
    and block grid its pixels show, here beside the decode rather than on the thread that keeps the model
    busy."""
    item = Item(job)
    t0 = time.perf_counter()
    path = job.source.path
    if appeared(job, opts):
        item.skipped = APPEARED
        return item
    try:
        _refuse_too_large(path)
        if gpu_jpeg and path.suffix.lower() in (".jpg", ".jpeg"):
            item.blob = jpeg_for_gpu(path)
            if item.blob is not None:
                return item
        item.x, item.meta = read_image(path)
        if task_needs_mask:
            _read_mask(item, opts)
        if find_grid and item.meta.jpeg_quality is None:
            item.pixel_grid = find_jpeg_grid(item.x)
    except ImageError as e:
        item.error = str(e)
    except MemoryError:
        item.error = f"{path}: not enough memory to decode it"
    except Exception as e:  # noqa: BLE001 - a decoder bug on one odd file must not end a long run
        item.error = f"{path}: cannot decode image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    item.seconds = time.perf_counter() - t0
    return item


def _refuse_too_large(path: Path) -> None:
    """An image whose restore would not fit in the memory free now fails here, before it is decoded."""
    pixels = image_pixels(path)  # from the header; None: reading it names the problem
    if not pixels:
        return
    need, free = restore_bytes(pixels), available_bytes()
    if free is not None and need > free:
        # A header that claims far more than the file holds is the fault to name, not the memory it claims.
        try:
            refuse_damaged_jpeg(path)
        except OSError:
            pass  # unreadable now: reading it below names that
        raise ImageError(f"{path}: {pixels / 1e6:.1f} MP needs about {gigabytes(need)} of memory to restore, "
                         f"more than the {gigabytes(free)} free; free memory, or split the image and restore "
                         f"the parts")


APPEARED = "output appeared while this run was working (another run wrote it; --skip-existing)"


def appeared(job: Job, opts: RestoreOptions) -> bool:
    """Under --skip-existing: the planned output exists now (a run beside this one wrote it), so reading,
    restoring and writing it again would be work thrown away."""
    if not opts.skip_existing:
        return False
    output = job.output
    return (output.exists() or output.is_symlink()) and not (job.redo_empty and empty_file(output))


def _read_mask(item: Item, opts: RestoreOptions) -> None:
    """The holes to fill: from --masks (same relative path, any extension) or from the image's alpha."""
    path, rel = item.job.source.path, item.job.source.rel
    if opts.masks is None:
        item.mask = mask_from_alpha(item.meta, path)
        item.meta.alpha = None  # the holes are filled now: the output is opaque
        return
    mask_path = find_mask(opts.masks, rel)
    if mask_path is None:
        raise ImageError(f"{path}: no mask {Path(opts.masks) / rel.with_suffix('.*')}; "
                         f"masks need the same relative path (any image extension)")
    item.mask = read_mask(mask_path, tuple(item.x.shape[-2:]), image=path)


def _decode_gpu_jpegs(items: list[Item], device) -> list[Item]:
    """Decode the collected JPEG blobs in one nvJPEG batch; anything it cannot do goes through Pillow.

    Runs on its own thread (the main thread keeps the model busy meanwhile); the decoded
    uint8 pixels become float here, on the host.
    """
    from ..gpu_jpeg import decode_jpegs_cuda  # looked up per call: a stand-in may replace it

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
            it.x, it.meta = from_levels_u8(x), meta
        else:
            _decode_with_pillow(it)
    return items


def _decode_with_pillow(item: Item) -> None:
    t0 = time.perf_counter()
    try:
        item.x, item.meta = read_image(item.job.source.path)
    except ImageError as e:
        item.error = str(e)
    except Exception as e:  # noqa: BLE001 - one undecodable file must not end a long run
        item.error = f"{item.job.source.path}: cannot decode ({type(e).__name__}: {e})"
    item.seconds += time.perf_counter() - t0


def _write(item: Item, y, opts: RestoreOptions) -> Item:
    t0 = time.perf_counter()
    output = item.job.output
    try:
        data = encode_image(y, item.meta, output.suffix, quality=opts.quality, png_compress_level=opts.png_level)
        _put(item, data, opts)
    except ImageError as e:
        msg = str(e)
        item.error = msg if str(output) in msg else f"{output}: {msg}"
    except MemoryError:
        item.error = f"{output}: not enough memory to encode it"
    except Exception as e:  # noqa: BLE001 - one file that cannot be encoded must not end a long run
        item.error = f"{output}: cannot encode ({type(e).__name__}: {e}); try another --format"
    item.seconds += time.perf_counter() - t0
    return item


def _copy(item: Item, opts: RestoreOptions) -> Item:
    """--task auto left the file as it is: its bytes under its own extension, by the rules of any output."""
    t0 = time.perf_counter()
    source = item.job.source.path
    if item.job.output.suffix != source.suffix:  # a format irae cannot write was planned as PNG
        item.job.output = item.job.output.with_suffix(source.suffix)
    try:
        data = source.read_bytes()
    except OSError as e:
        item.error = f"{source}: cannot read it to copy ({e.strerror or e}); check it is readable"
    else:
        try:
            _put(item, data, opts)
        except ImageError as e:
            msg = str(e)
            item.error = msg if str(item.job.output) in msg else f"{item.job.output}: {msg}"
    item.seconds += time.perf_counter() - t0
    return item


def _put(item: Item, data: bytes, opts: RestoreOptions) -> None:
    """Write an output's bytes atomically; an existing file is replaced only by --overwrite, or when the plan
    found it empty (a killed write)."""
    output = item.job.output
    replace = opts.overwrite
    if item.job.redo_empty:  # replace the empty file found by the plan, nothing that has appeared since
        replace = empty_file(output) or not (output.exists() or output.is_symlink())
        item.notes.append("replaced an empty (0-byte) output")
    try:
        atomic_write_bytes(output, data, overwrite=replace)
    except OutputExists as e:
        if opts.skip_existing:  # another run wrote it meanwhile: theirs is kept, and this is no failure
            item.skipped = APPEARED
        else:
            item.error = str(e)
