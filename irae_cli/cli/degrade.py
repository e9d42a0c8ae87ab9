"""`irae degrade`: reproducible degraded test sets with a manifest (the work is in ``testset``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import EXIT_SOME_FAILED, IraeError, one_line
from ._common import (QUALITIES, SIGMAS, Exclude, HoleRatio, Include, Mask, NoiseProtocol, Quiet, Recursive, Seed,
                      Subsampling, finish_hint, parse_list, parse_names, parse_range, user_errors)

_CLEAN = typer.Argument(..., help="Clean image file or folder (never written to).", show_default=False)
_OUT = typer.Argument(..., help="Output folder for the set; must be new or empty.", show_default=False)
_TASK = typer.Option(..., "--task", "-t", help="denoise, jpeg, inpaint, or auto: a mixed set (noise at each "
                     "--sigma, JPEG at each --quality, and the clean files) to try --task auto on.", show_default=False)
_SIGMA = typer.Option(
    None, "--sigma", help="denoise: noise levels on the 0-255 scale, comma-separated; a range such as "
                          f"0-55 draws sigma per image (recorded). Default: {SIGMAS}.", show_default=False)
_QUALITY = typer.Option(
    None, "--quality", help=f"jpeg: qualities, comma-separated. Default: {QUALITIES}.", show_default=False)
_DOUBLE_QUALITY = typer.Option(
    None, "--double-quality", help="jpeg: compress at this quality first (double JPEG).", show_default=False)
_HOLE_BINS = typer.Option(
    None, "--hole-bins", help="inpaint: one level per bin, e.g. 0.1-0.2,0.2-0.3 (folders box-10-20, ...).",
    show_default=False)
_WORKERS = typer.Option(min(4, os.cpu_count() or 1), "--workers", "-j",
                        help="Images processed in parallel; results do not depend on it.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Write into a non-empty OUT, replacing files.")
_SKIP_EXISTING = typer.Option(False, "--skip-existing", help="Write into a non-empty OUT, keeping files that are "
                                                             "already identical (a file that differs is an error).")
_DRY_RUN = typer.Option(False, "--dry-run", help="Check everything and print the plan; write nothing.")


def _ranges(text: str | None, name: str) -> list[tuple[float, float]] | None:
    """'15,25,0-55' -> [(15, 15), (25, 25), (0, 55)]."""
    if text is None:
        return None
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise IraeError(f"{name} {text!r} gives no value; give e.g. 15,25 or 0-55, or leave the option out")
    return [parse_range(p, float, name) for p in parts]


def _level_options(sigma: str | None, noise_protocol: str | None, quality: str | None, subsampling: str | None,
                   double_quality: int | None, mask: str | None, hole_ratio: str | None,
                   hole_bins: str | None) -> dict:
    """The level options as make_test_set takes them (parsed in option order, so the first bad one is named)."""
    return dict(
        sigma=_ranges(sigma, "--sigma"), noise_protocol=noise_protocol,
        quality=parse_list(quality, int, "--quality") if quality is not None else None,
        subsampling=subsampling, double_quality=double_quality, masks=parse_names(mask, "--mask"),
        hole_ratio=parse_range(hole_ratio, float, "--hole-ratio") if hole_ratio is not None else None,
        hole_bins=_ranges(hole_bins, "--hole-bins"))


class _Display:
    """The progress bar (made once the checks pass and the images are counted) and the images that failed."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.failed: set = set()

    def on_start(self, total: int) -> None:
        from ..progress import Progress

        self.bar = Progress("degrading", total, quiet=self.quiet)

    def on_file(self, src, failures: list[str]) -> None:
        if failures:
            self.failed.add(src.rel)
        for line in failures:
            self.bar.say(f"irae: error: {line}")
        self.bar.update(advance=1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_plan(result, out: Path) -> None:
    n_img, n_lvl = len(result.sources), len(result.levels)
    print(f"would degrade {n_img} image(s) x {n_lvl} level(s) = {n_img * n_lvl} output(s) into "
          f"{one_line(out)}")
    for level in result.levels:
        print(f"  {level.name}: {level.task} {level.params}")


def _print_summary(result, out: Path, failed_images: int, quiet: bool) -> None:
    """The summary on stderr (unless quiet); exit code 1 when some images failed."""
    n_img, n_lvl = len(result.sources), len(result.levels)
    if not quiet:
        made = len(result.records) - result.carried
        kept = f", {result.kept} identical file(s) kept" if result.kept else ""
        carried = f" ({result.carried} from the earlier manifest)" if result.carried else ""
        print(f"irae: {made} output(s) from {n_img - failed_images} image(s) x {n_lvl} level(s) in "
              f"{one_line(out)}: {result.written} file(s) written{kept}; {one_line(result.manifest)} lists "
              f"{len(result.records)} output(s){carried}", file=sys.stderr)
    if result.failures:
        print(f"irae: {len(result.failures)} problem(s) with {failed_images} of {n_img} image(s), listed "
              f"above; the manifest lists only complete outputs", file=sys.stderr)
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer) -> None:
    @app.command("degrade")
    def degrade(
        clean: Path = _CLEAN,
        out: Path = _OUT,
        task: str = _TASK,
        sigma: Optional[str] = _SIGMA,
        noise_protocol: NoiseProtocol = None,
        quality: Optional[str] = _QUALITY,
        subsampling: Subsampling = None,
        double_quality: Optional[int] = _DOUBLE_QUALITY,
        mask: Mask = None,
        hole_ratio: HoleRatio = None,
        hole_bins: Optional[str] = _HOLE_BINS,
        seed: Seed = 0,
        recursive: Recursive = True,
        include: Include = None,
        exclude: Exclude = None,
        workers: int = _WORKERS,
        overwrite: bool = _OVERWRITE,
        skip_existing: bool = _SKIP_EXISTING,
        dry_run: bool = _DRY_RUN,
        quiet: Quiet = False,
    ) -> None:
        """Make a degraded test set from clean images: OUT/clean/, one folder per level, OUT/manifest.jsonl.

        Outputs are byte-identical across runs, file orders and worker counts for the same seed.
        """
        with user_errors(finish_hint(skip_existing, overwrite)):
            from ..testset import make_test_set

            display = _Display(quiet)
            try:
                levels = _level_options(sigma, noise_protocol, quality, subsampling, double_quality, mask,
                                        hole_ratio, hole_bins)
                result = make_test_set(clean, out, task=task, seed=seed, **levels, recursive=recursive,
                                       include=include, exclude=exclude, workers=workers, overwrite=overwrite,
                                       skip_existing=skip_existing, dry_run=dry_run,
                                       on_start=display.on_start, on_file=display.on_file)
            finally:
                display.close()
            if dry_run:
                _print_plan(result, out)
                return
            _print_summary(result, out, len(display.failed), quiet)
