"""What `irae restore` can be asked to do, and the usage errors that need no file system work."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import check_backend
from ..errors import IraeError
from ..imagewrite import FORMATS
from ..shard import parse_shard

OUTPUT_FORMATS = ("auto", "same", *FORMATS)
FORMAT_ALIASES = {"jpeg": "jpg", "tif": "tiff"}


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
    compile: str = "auto"  # auto | on | off (defaults.COMPILE_MODES)
    backend: str = "auto"  # auto | torch | onnxruntime (irae_cli.backends)
    self_ensemble: bool = False  # the mean over the 8 flips and turns of each image (8x the model time)
    shard: str | None = None  # "K/N": restore part K of N (see shard.py); under torchrun, shared by its processes
    sigma: float | None = None  # a conditioned denoiser's noise level for every image (None: each one's estimate)
    input_quality: int | None = None  # a quality-conditioned JPEG model's level for every image (None: each header's)


def check_options(opts: RestoreOptions) -> RestoreOptions:
    """The options with --format's aliases resolved; raises ``IraeError`` for usage errors.

    The caller's object is left as it was: library callers may reuse it for another run.
    """
    from ..routing import AUTO
    from ..tasks import get_task

    task = None if opts.task == AUTO else get_task(opts.task)  # an unknown task is the first thing to say
    opts = dataclasses.replace(opts, format=FORMAT_ALIASES.get(opts.format, opts.format))
    if opts.format not in OUTPUT_FORMATS:
        raise IraeError(f"--format {opts.format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if task is None:
        _check_auto(opts)
    if opts.skip_existing and opts.overwrite:
        raise IraeError("--skip-existing and --overwrite contradict each other; pass one")
    _check_numbers(opts)
    if os.sep in opts.suffix or "/" in opts.suffix:
        raise IraeError(f"--suffix {opts.suffix!r} must not contain a path separator")
    _check_masks(opts, task)
    _check_sigma(opts)
    _check_input_quality(opts)
    check_backend(opts.backend, opts.device, opts.dtype, opts.compile)
    if opts.shard is not None:
        parse_shard(opts.shard)
    return opts


AUTO_IO_THREADS = 4  # per pool (decoding, encoding); --workers sets more on a machine with many cores


def io_threads(workers: int) -> int:
    """Threads per I/O pool for ``--workers`` (0 = auto)."""
    return workers or max(1, min(AUTO_IO_THREADS, os.cpu_count() or 1))


def _check_numbers(opts: RestoreOptions) -> None:
    if opts.batch_size < 1:
        raise IraeError(f"--batch-size must be at least 1, not {opts.batch_size}")
    if opts.workers < 0:
        raise IraeError(f"--workers must be 0 (auto) or more, not {opts.workers}")
    if not 1 <= opts.quality <= 100:
        raise IraeError(f"--quality must be 1-100, not {opts.quality}")
    if not 0 <= opts.png_level <= 9:
        raise IraeError(f"--png-level must be 0-9, not {opts.png_level}")


def _check_sigma(opts: RestoreOptions) -> None:
    """--sigma's range and task; whether the weights take it is checked once they are known (plan)."""
    from ..model.condition import SIGMA_MAX

    if opts.sigma is None:
        return
    if opts.task != "denoise":
        raise IraeError(f"--sigma is the noise level of a conditioned denoiser: it goes with --task denoise, "
                        f"not {opts.task}")
    if not 0 <= opts.sigma <= SIGMA_MAX:
        raise IraeError(f"--sigma {opts.sigma:g} is out of range: give the noise sigma on the 0-255 scale")


def _check_input_quality(opts: RestoreOptions) -> None:
    """--input-quality's range and task; whether the weights take it is checked once they are known (plan)."""
    if opts.input_quality is None:
        return
    if opts.task != "jpeg":
        raise IraeError(f"--input-quality is the JPEG quality a quality-conditioned JPEG model is told: it goes "
                        f"with --task jpeg, not {opts.task}")
    if not 1 <= opts.input_quality <= 100:
        raise IraeError(f"--input-quality {opts.input_quality} is out of range: give a JPEG quality 1-100")


def _check_auto(opts: RestoreOptions) -> None:
    """--task auto picks the shipped weights of each task and keeps each file's own format."""
    if opts.weights is not None:
        raise IraeError("--weights names the weights of one task; --task auto uses the shipped weights of each "
                        "task it routes to: drop --weights, or pick the task with --task denoise or --task jpeg")
    if opts.masks is not None or opts.mask_from is not None:
        raise IraeError("--task auto never inpaints (holes need a mask per file): run --task inpaint with "
                        "--masks or --mask-from on those files")
    if opts.format not in ("auto", "same"):
        raise IraeError(f"--format {opts.format} does not go with --task auto, which copies clean files byte for "
                        f"byte under their own extension; use --format auto or same, or a fixed --task")


def _check_masks(opts: RestoreOptions, task) -> None:
    if task is None:
        return
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
