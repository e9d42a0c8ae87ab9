"""`irae restore`: restore a file or a folder tree of images with trained weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import IraeError
from ._common import (Backend, BatchSize, Compile, DeviceTorchrun, Dtype, Exclude, Include, Quiet, Recursive,
                      Task, Tile, Weights, finish_hint, user_errors)

EPILOG = """Examples:

  irae restore --task denoise photos/ restored/ --weights w.safetensors

  irae restore --task jpeg scans/ out/ --skip-existing --report run.jsonl

  irae restore --task auto phone/ out/ --dry-run   (each file: JPEG model, denoiser or copied as it is)

  irae restore --task inpaint damaged/ out/ --masks masks/ --weights inpaint.safetensors

  torchrun --standalone --nproc_per_node 4 -m irae_cli restore --task denoise photos/ out/ --report run.jsonl

  irae restore --task denoise photos/ out/ --shard $SLURM_ARRAY_TASK_ID/8 --skip-existing

Exit codes: 0 all restored, 1 some files failed (the rest were done), 2 usage error (nothing done)."""


_Input = Annotated[Path, typer.Argument(help="An image file or a folder of images.", show_default=False)]
_Output = Annotated[Path, typer.Argument(help="Output folder (mirrors INPUT's tree), or a file for a single input.",
                                         show_default=False)]
_SIGMA = typer.Option(None, "--sigma", help="denoise, weights trained with --condition sigma: the noise "
                      "sigma (0-255 scale) to restore every image at (default: each image's estimated sigma).",
                      show_default=False)
_INPUT_QUALITY = typer.Option(None, "--input-quality", help="jpeg, weights trained with --condition quality: "
                              "the JPEG quality (1-100) every input was saved at (default: each JPEG file's "
                              "own, read from its quantisation tables, else estimated from its pixels; a file "
                              "that shows neither needs this).",
                              show_default=False)
_MASKS = typer.Option(None, "--masks", help="inpaint: folder of masks at the same "
                      "relative paths, any image extension; 255 = missing.")
_MASK_FROM = typer.Option(None, "--mask-from", help="inpaint: 'alpha' takes the holes from transparent pixels.")
_FORMAT = typer.Option("auto", "--format", "-f", help="auto, same, png, jpg, webp or tiff; auto "
                       "= same as the input, but PNG for JPEG inputs of --task jpeg.")
_QUALITY = typer.Option(95, "--quality", help="JPEG/WebP quality of the outputs.")
_PNG_LEVEL = typer.Option(1, "--png-level", help="PNG compression 0-9 (1 is fast, 9 is small).")
_SUFFIX = typer.Option("", "--suffix", help="Added to output names, e.g. _restored.")
_SKIP_EXISTING = typer.Option(False, "--skip-existing", help="Resume: leave existing outputs alone.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs.")
_SHARD = typer.Option(None, "--shard", help="K/N: restore only part K of N (K from 0), "
                      "balanced by pixels; for job arrays. Under torchrun the part is "
                      "shared by the job's processes.", show_default=False)
_SELF_ENSEMBLE = typer.Option(False, "--self-ensemble", help="Restore each image in its 8 flips and "
                              "quarter turns and average them: 8x the time, a few tenths of a dB better; the "
                              "result is then no longer exactly invertible.")
_TILE_OVERLAP = typer.Option(None, "--tile-overlap", help="Overlap between tiles, blended linearly "
                             "(default: 32, or a quarter of a smaller --tile).", show_default=False)
_WORKERS = typer.Option(0, "--workers", "-j", help="Threads for decoding and for encoding (0 = auto).")
_REPORT = typer.Option(None, "--report", help="Write one JSON line per image here.")
_DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan and do nothing.")


def register(app: typer.Typer) -> None:
    @app.command("restore", epilog=EPILOG)
    def restore_cli(
        input: _Input,
        output: _Output,
        task: Task,
        weights: Weights = None,
        sigma: Optional[float] = _SIGMA,
        input_quality: Optional[int] = _INPUT_QUALITY,
        recursive: Recursive = True,
        include: Include = None,
        exclude: Exclude = None,
        masks: Optional[Path] = _MASKS,
        mask_from: Optional[str] = _MASK_FROM,
        out_format: str = _FORMAT,
        quality: int = _QUALITY,
        png_level: int = _PNG_LEVEL,
        suffix: str = _SUFFIX,
        skip_existing: bool = _SKIP_EXISTING,
        overwrite: bool = _OVERWRITE,
        device: DeviceTorchrun = "auto",
        shard: Optional[str] = _SHARD,
        dtype: Dtype = "auto",
        compile_mode: Compile = "auto",
        backend: Backend = "auto",
        self_ensemble: bool = _SELF_ENSEMBLE,
        tile: Tile = "auto",
        tile_overlap: Optional[int] = _TILE_OVERLAP,
        batch_size: BatchSize = 4,
        workers: int = _WORKERS,
        report: Optional[Path] = _REPORT,
        dry_run: bool = _DRY_RUN,
        quiet: Quiet = False,
    ) -> None:
        """Restore a file or a folder of images (denoise, remove JPEG artefacts, inpaint holes).

        Outputs mirror INPUT's folder tree; existing outputs are never replaced
        unless --overwrite (or left alone with --skip-existing); colour is
        restored while alpha, bit depth, ICC profile and EXIF are kept.
        """
        with user_errors(finish_hint(skip_existing, overwrite)):
            from ..restore import RestoreOptions, restore

            opts = RestoreOptions(
                task=task, weights=weights, device=device, dtype=dtype, tile=_tile(tile),
                tile_overlap=tile_overlap, batch_size=batch_size, workers=workers, format=out_format.lower(),
                quality=quality, png_level=png_level, suffix=suffix, recursive=recursive,
                include=list(include or ()), exclude=list(exclude or ()), skip_existing=skip_existing,
                overwrite=overwrite,
                report=report, dry_run=dry_run, masks=masks, mask_from=mask_from, compile=compile_mode, shard=shard,
                self_ensemble=self_ensemble, backend=backend, sigma=sigma,
                input_quality=input_quality)
            summary = restore(input, output, opts, progress=sys.stderr.isatty(), quiet=quiet)
        raise typer.Exit(summary.exit_code)


def _tile(text: str) -> int | str:
    """--tile: ``auto`` or a number of pixels (0 = the whole image)."""
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise IraeError(f"--tile {text!r}: use auto, 0 (whole image) or a size in pixels") from None
