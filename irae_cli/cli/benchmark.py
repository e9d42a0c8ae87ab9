"""`irae benchmark quality | speed | invertibility`: parse, call one function in irae_cli.benchmark, print.

The table goes to stdout; ``--json`` writes the full machine-readable result
(settings and versions included).  Exit codes: 0 = done, 1 = some images
failed (listed on stderr, the rest were measured) or the invertibility
self-test failed, 2 = usage/config error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import one_line
from ._common import (WEIGHTS, Backend, BackendList, BatchSize, Device, Dtype, DtypeList, HoleRatio, Mask,
                      NoiseProtocol, QUALITIES, SIGMAS, SUBSAMPLING, Seed, Task, Tile, Weights, parse_list, parse_names,
                      parse_range, user_errors)

sub = typer.Typer(
    name="benchmark",
    help="Quality, speed and invertibility figures anyone can rerun (tables on screen, --json, --sheet).",
    no_args_is_help=True,
    add_completion=False,
)

_JSON = typer.Option(None, "--json", help="Write the full result (settings, versions, per-image) to this JSON file.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing --json/--sheet files.")


def _scored_counter(bar):
    """The quality loop's per-image callback: count on the bar (only on a terminal; else nothing)."""
    if not bar.live:
        return None
    return lambda image: bar.update(advance=1, image=one_line(image)[-60:])


def _finish(result: dict, table, json_path: Optional[Path], overwrite: bool) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    from ..benchmark.common import write_json

    console = Console()
    # Never squeeze metric names into ellipses: a report is only useful when its columns are readable.
    natural = Measurement.get(console, console.options.update(max_width=1000), table).maximum
    console.width = max(console.width, natural)
    console.print(table)
    failed = bool(result.get("failures"))
    for f in result.get("failures", []):
        print(f"irae: error: {one_line(f['error'])}", file=sys.stderr)
    sheet = result.get("settings", {}).get("sheet")
    if isinstance(sheet, dict) and sheet.get("error"):
        print(f"irae: error: {one_line(sheet['error'])}", file=sys.stderr)
        failed = True
    if json_path is not None:
        write_json(result, json_path, overwrite=overwrite)
    return 1 if failed else 0


# The options of `quality` alone (speed and invertibility, shorter, declare theirs in place).
_Source = Annotated[Path, typer.Argument(help="Clean image folder or file (degraded here with fixed seeds), "
                                              "or a manifest.jsonl written by 'irae degrade'.", show_default=False)]
_COMPARE = typer.Option([], "--compare", help="Another model as NAME=WEIGHTS; repeatable.")
_SIGMA = typer.Option(None, "--sigma", help=f"Noise levels on the 0-255 scale (default {SIGMAS}).")
_QUALITY = typer.Option(None, "--quality", help=f"JPEG qualities, Pillow at {SUBSAMPLING} (default {QUALITIES}).")
_SHEET = typer.Option(None, "--sheet", help="Write a comparison sheet PNG: degraded | each model | clean "
                                            "crops, labelled with PSNR.")
_SHEET_CROP = typer.Option(128, "--sheet-crop", help="Side of each sheet tile in px.")
_SHEET_IMAGES = typer.Option(8, "--sheet-images", help="Images per level shown on the sheet.")
_SHEET_REGION = typer.Option("worst", "--sheet-region", help="worst: the crop where the first model errs most; "
                                                             "centre.")
_CLASSICAL = typer.Option("all", "--classical", help="Classical rows: all, none, or names (cbm3d, nlm; "
                          "harmonic-fill, telea, navier-stokes). cbm3d/nlm/telea/navier-stokes need "
                          "pip install 'irae[classical]'.")
_WORKERS = typer.Option(0, "--workers", "-j", help="Processes for the classical rows (CBM3D takes minutes per "
                        "photo on one core): 0 = auto, one per core but one, up to 8; 1 = in this process. "
                        "The figures do not depend on it.")


_SELF_ENSEMBLE = typer.Option(False, "--self-ensemble", help="Add a row 'NAME x8' per network: the mean "
                              "of its restorations of the 8 flips and quarter turns of each image.")
_KNOWN_SIGMA = typer.Option(False, "--known-sigma", help="denoise, weights trained with --condition sigma: "
                            "restore at the sigma each image was degraded with, not at its estimate (the "
                            "default, what restore does).")


@sub.command("quality")
def quality_cmd(
    source: _Source,
    task: Task,
    weights: Weights = None,
    compare: List[str] = _COMPARE,
    sigma: Optional[str] = _SIGMA,
    noise_protocol: NoiseProtocol = None,
    quality: Optional[str] = _QUALITY,
    mask: Mask = None,
    hole_ratio: HoleRatio = None,
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tile: Tile = "auto",
    batch_size: BatchSize = 4,
    json_path: Optional[Path] = _JSON,
    sheet: Optional[Path] = _SHEET,
    sheet_crop: int = _SHEET_CROP,
    sheet_images: int = _SHEET_IMAGES,
    sheet_region: str = _SHEET_REGION,
    classical: str = _CLASSICAL,
    workers: int = _WORKERS,
    self_ensemble: bool = _SELF_ENSEMBLE,
    backend: Backend = "auto",
    known_sigma: bool = _KNOWN_SIGMA,
    overwrite: bool = _OVERWRITE,
) -> None:
    """Degrade, restore with each model, score: PSNR/SSIM on RGB and Y, PSNR-B (jpeg), hole PSNR (inpaint).

    Classical methods (CBM3D and non-local means for denoising, harmonic fill and OpenCV's Telea
    and Navier-Stokes for inpainting) are scored in the same run, on the same degraded images.
    """
    with user_errors():
        from ..benchmark.classical_rows import workers_for
        from ..benchmark.common import check_outputs
        from ..benchmark.models import parse_compare
        from ..benchmark.quality import quality as run_quality
        from ..benchmark.tables import quality_table
        from ..progress import Progress

        if task == "auto":
            _check_auto_options(weights=weights, compare=compare, sigma=sigma, noise_protocol=noise_protocol,
                                quality=quality, mask=mask, hole_ratio=hole_ratio, sheet=sheet,
                                self_ensemble=self_ensemble, known_sigma=known_sigma)
            raise typer.Exit(_auto(source, device, dtype, tile, batch_size, json_path, overwrite))
        _check_sheet_options(sheet_region, sheet_images, sheet_crop)
        workers = workers_for(workers)
        tile_value = "auto" if tile.strip() == "auto" else parse_range(tile, int, "--tile")[0]
        check_outputs({"--json": json_path, "--sheet": sheet}, overwrite)
        with Progress("scoring", columns=("last {image}",), fields={"image": ""}, unit="image(s)") as bar:
            result = run_quality(
                source, task=task, weights=weights, compare=parse_compare(compare),
                **_levels(sigma, quality, mask, hole_ratio), noise_protocol=noise_protocol, seed=seed,
                device=device, dtype=dtype, tile=tile_value, batch_size=batch_size, sheet=sheet,
                sheet_crop=sheet_crop, sheet_images=sheet_images, sheet_crop_mode=sheet_region,
                overwrite=overwrite, progress=_scored_counter(bar), classical=classical, workers=workers,
                self_ensemble=self_ensemble, backend=backend, known_sigma=known_sigma)
        _note_skipped_classical(result["settings"]["classical"])
        code = _finish(result, quality_table(result), json_path, overwrite)
    raise typer.Exit(code)


def _check_auto_options(**given) -> None:
    """--task auto scores a mixed set as it is, with the shipped weights of each task."""
    from ..errors import IraeError

    names = {"self_ensemble": "--self-ensemble", "noise_protocol": "--noise-protocol", "hole_ratio": "--hole-ratio",
             "known_sigma": "--known-sigma"}
    stray = [names.get(k, f"--{k}") for k, v in given.items() if v]
    if stray:
        raise IraeError(f"{', '.join(stray)} cannot be used with --task auto, which scores a mixed set made by "
                        f"'irae degrade --task auto' with the shipped weights of each task; drop them")


def _auto(source: Path, device: str, dtype: str, tile: str, batch_size: int, json_path: Optional[Path],
          overwrite: bool) -> int:
    from rich.console import Console

    from ..benchmark.auto import auto_quality
    from ..benchmark.common import check_outputs, write_json
    from ..benchmark.tables import auto_tables
    from ..progress import Progress

    check_outputs({"--json": json_path}, overwrite)
    tile_value = "auto" if tile.strip() == "auto" else parse_range(tile, int, "--tile")[0]
    with Progress("scoring", columns=("last {image}",), fields={"image": ""}, unit="file(s)") as bar:
        result = auto_quality(source, device=device, dtype=dtype, tile=tile_value, batch_size=batch_size,
                              progress=_scored_counter(bar))
    console = Console(width=200)
    for table in auto_tables(result):
        console.print(table)
    for f in result["failures"]:
        print(f"irae: error: {one_line(f['error'])}", file=sys.stderr)
    if json_path is not None:
        write_json(result, json_path, overwrite=overwrite)
    return 1 if result["failures"] else 0


def _check_sheet_options(region: str, images: int, crop: int) -> None:
    from ..errors import IraeError

    if region not in ("worst", "centre", "center"):
        raise IraeError(f"--sheet-region {region!r}: use worst or centre")
    if images < 1 or crop < 16:
        raise IraeError("--sheet-images must be >= 1 and --sheet-crop >= 16")


def _levels(sigma: str | None, quality: str | None, mask: str | None, hole_ratio: str | None) -> dict:
    """The degradation levels given on the command line; None where the task's defaults apply."""
    return dict(sigmas=parse_list(sigma, float, "--sigma") or None,
                qualities=parse_list(quality, int, "--quality") or None, masks=parse_names(mask, "--mask"),
                hole_range=parse_range(hole_ratio, float, "--hole-ratio") if hole_ratio else None)


def _note_skipped_classical(classical: dict) -> None:
    if classical["missing"]:
        print(f"irae: note: classical rows {', '.join(classical['missing'])} skipped: {classical['install']}",
              file=sys.stderr)


@sub.command("speed")
def speed_cmd(
    arch: Optional[str] = typer.Option(None, "--arch", help="Untrained preset to time (default paper-denoise)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help=f"{WEIGHTS} to time instead of --arch."),
    size: int = typer.Option(1024, "--size", help="Image side in px (rounded up to the model's size multiple)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per call (halved on out-of-memory)."),
    dtype: DtypeList = "auto",
    device: Device = "auto",
    backend: BackendList = "auto",
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (falls back to eager, noted)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Use channels_last memory format."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed runs (default 10; 1 with --folder)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed runs first."),
    folder: Optional[Path] = typer.Option(None, "--folder",
                                          help="End to end: restore this folder into a temp folder, I/O included."),
    naive: bool = typer.Option(False, "--naive", help="With --folder: also time a plain per-image loop."),
    workers: int = typer.Option(0, "--workers", "-j", help="With --folder: restore's I/O threads per pool "
                                "(decoding, encoding; 0 = auto, up to 4)."),
    baseline: bool = typer.Option(False, "--baseline", help="Also time the eager fp32 unfolded model in the "
                                  "same run, as the reference for speed-ups."),
    train: bool = typer.Option(False, "--train", help="Time training steps of the --arch preset instead: "
                               "--batch-size patches of --size, eager and (with --compile) compiled, "
                               "in the same run; images/s is patches/s."),
    json_path: Optional[Path] = _JSON,
    overwrite: bool = _OVERWRITE,
) -> None:
    """Time the model (median, p90, MP/s, images/s, peak memory, MAC/pixel) or a folder end to end."""
    with user_errors():
        from ..benchmark.common import check_outputs
        from ..benchmark.speed import speed
        from ..benchmark.tables import speed_table

        check_outputs({"--json": json_path}, overwrite)
        result = speed(arch=arch, weights=weights, size=size, batch_size=batch_size, dtype=dtype, device=device,
                       compile=compile, repeats=repeats, warmup=warmup, folder=folder, naive=naive,
                       channels_last=channels_last, baseline=baseline, workers=workers, backend=backend,
                       train=train)
        for note in result["notes"]:
            print(f"irae: note: {one_line(note)}", file=sys.stderr)
        code = _finish(result, speed_table(result), json_path, overwrite)
    raise typer.Exit(code)


@sub.command("invertibility")
def invertibility_cmd(
    images: Optional[Path] = typer.Argument(None, help="Folder (or file) of photos (default examples/)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help=f"{WEIGHTS} of an IRAE model."),
    arch: Optional[str] = typer.Option(None, "--arch",
                                       help="Untrained preset, initialised on the images (smoke test)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp64 or bf16: the precision of the round trip (bf16 "
                              "runs the coupling nets alone in bf16, as restore and training do)."),
    device: Device = "auto",
    size: Optional[int] = typer.Option(None, "--size", help="Measure at SIZE x SIZE (photo mirrored to fill)."),
    json_path: Optional[Path] = _JSON,
    overwrite: bool = _OVERWRITE,
) -> None:
    """Round-trip error of inverse(forward(y)) on real images, and the 1x1 convs' condition numbers.

    fp32 passes when every pixel of the round trip rounds back to the 8-bit input (max error
    < 0.5 of one level); fp64 when the relative error is <= 1e-9.
    """
    with user_errors():
        from ..benchmark.common import check_outputs
        from ..benchmark.invertibility import invertibility
        from ..benchmark.tables import invertibility_table

        check_outputs({"--json": json_path}, overwrite)
        result = invertibility(weights=weights, arch=arch, images=images, dtype=dtype, device=device, size=size)
        code = _finish(result, invertibility_table(result), json_path, overwrite)
        if not result["summary"]["passed"]:
            summ = result["summary"]
            if dtype == "fp32":
                print(f"irae: error: the round trip misses the 8-bit input by up to {summ['max_error_levels']:.3f} "
                      f"of one level (must be < 0.5)", file=sys.stderr)
            else:
                print(f"irae: error: round-trip error {summ['max_rel_error']:.2e} exceeds the "
                      f"{dtype} tolerance {result['settings']['tolerance']:.0e}", file=sys.stderr)
            code = 1
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="benchmark")

