"""`irae train`: parse options, call ``irae_cli.train.train``, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..defaults import check_compile_mode
from ..errors import IraeError, one_line
from ._common import (TRAIN_QUALITY, TRAIN_SIGMA, DeviceTorchrun, HoleRatio, Mask, NoiseProtocol, Subsampling,
                      TrainDtype, parse_names, parse_range, user_errors)

HELP = """Train a restoration model on patches of your photos (or a .safetensors pack).

Patches are degraded on the fly (noise, real JPEG, or holes), the model learns
to undo it (L1 loss, Adam, warm-up + cosine).  Stop with --steps and/or
--minutes; a checkpoint (FILE.ckpt.safetensors) is written every
--checkpoint-every steps and at the end, and --resume continues a run exactly.
The saved weights are the EMA of the training weights.
"""

# The options, in the order --help lists them.  None means "not given": the task's default applies, or, on
# --resume, the checkpoint's value.
_DATA = typer.Argument(None, help="Folder of training images (searched recursively) or a "
                                  ".safetensors training pack. Optional with --resume.")
_OUT = typer.Option(..., "--out", "-o", help="Weights file to write (.safetensors).")
_TASK = typer.Option(None, "--task", "-t", help="denoise | jpeg | inpaint (default: denoise)")
_ARCH = typer.Option(None, "--arch", help="Model preset, e.g. tiny, paper-denoise, "
                                          "cnn (a wrong name lists all) (default: the task's).")
_STEPS = typer.Option(None, "--steps", help="Training steps; the cosine schedule spans them.")
_MINUTES = typer.Option(None, "--minutes", help="Wall-clock budget of this invocation; "
                        "stops cleanly and saves. Alone, it also sets the schedule length.")
_STOP_AT = typer.Option(None, "--stop-at", help="Stop (and save) at this step without "
                        "ending the schedule; continue later with --resume.")
_RESUME = typer.Option(None, "--resume", help="Continue the run saved in this checkpoint.")
_PATCH = typer.Option(None, "--patch", help="Patch side in pixels (default: 64; 128 for inpaint).")
_BATCH_SIZE = typer.Option(None, "--batch-size", "-b", help="Patches per step and GPU "
                           "(default: 64 on CUDA, 8 on the CPU).")
_LR = typer.Option(None, "--lr", help="Peak learning rate (default: 1e-3; 1e-4 for inpaint).")
_WARMUP = typer.Option(None, "--warmup", help="Warm-up steps (default: 2 % of --steps).")
_CLIP = typer.Option(None, "--clip", help="Gradient-norm clip, 0 = off (default: 10).")
_INVERSE_GAIN = typer.Option(None, "--inverse-gain", help="IRAE: largest gain allowed to "
                             "the inverse direction (finite-difference penalty that keeps "
                             "the fp32 round trip exact in 8 bits); 0 = off (default: 1000).")
_INIT_START = typer.Option(None, "--init-start", help="IRAE: data (each flow initialised "
                           "from its own data) or identity (the untrained model returns "
                           "its input) (default: identity for inpaint, else data).")
_INIT_FROM = typer.Option(None, "--init-from", help="Start from these trained weights "
                          "(a file or shipped name, same --arch; any task) instead of a "
                          "fresh initialisation: fine-tune, or begin a new schedule.")
_INVERSE_GAIN_EVERY = typer.Option(None, "--inverse-gain-every", help="IRAE: measure the "
                                   "inverse gain every N steps, its penalty weighted by N "
                                   "(default: 4; 1 = every step, ~2x slower).")
_INVERSE_PROBE = typer.Option(None, "--inverse-probe", help="IRAE: size of the step that measures the "
                              "inverse gain (default: 1e-3); below 1e-4 it measures the slope fp32 rounding "
                              "meets, against a second inverse pass (the probe runs in fp32).")
_LOSS = typer.Option(None, "--loss", help="l1 (the paper's) or l2 (squared error; over the holes for "
                     "inpainting) (default: l1).")
_LOW_SIGMA_WEIGHT = typer.Option(None, "--low-sigma-weight", help="denoise: weight each patch's loss by "
                                 "1/max(sigma, S0) so low noise counts as much as heavy noise (S0 on the "
                                 "0-255 scale, e.g. 5; default: off).")
_CONDITION = typer.Option(None, "--condition", help="IRAE: none (blind); sigma (denoise: every coupling net "
                          "also sees the noise level; training gives it the true sigma of each patch, restore "
                          "an estimate); quality (jpeg: the JPEG quality; restore reads it from each file). "
                          "With --init-from blind weights, they are widened (default: none).")
_EMA = typer.Option(None, "--ema", help="EMA decay of the saved weights, 0 = off (default: 0.999).")
_SEED = typer.Option(None, "--seed", help="Seed of every random draw (default: 0).")
_SIGMA = typer.Option(None, "--sigma", help=f"denoise: noise sigma range on the 0-255 scale (default: {TRAIN_SIGMA}).")
_QUALITY = typer.Option(None, "--quality", help=f"jpeg: quality range (default: {TRAIN_QUALITY}).")
_VAL = typer.Option(None, "--val", help="Folder of held-out images: PSNR every "
                                        "--val-every steps and at the end.")
_VAL_EVERY = typer.Option(None, "--val-every", help="Validate every N steps, 0 = only at "
                          "the end (default: 2000).")
_VAL_CROP = typer.Option(512, "--val-crop", help="Centre-crop validation images to at most this.")
_VAL_SEED = typer.Option(0, "--val-seed", help="Seed of the validation degradations.")
_CHECKPOINT = typer.Option(None, "--checkpoint", help="Checkpoint file (default: OUT with .ckpt.safetensors).")
_CHECKPOINT_EVERY = typer.Option(None, "--checkpoint-every", help="Checkpoint every N "
                                 "steps, 0 = only at the end (default: 1000).")
_LOG = typer.Option(None, "--log", help="JSON log (default: OUT with .log.json).")
_LOG_EVERY = typer.Option(None, "--log-every", help="Steps per logged loss interval.")
_COMPILE = typer.Option("auto", "--compile", help="auto, on or off: torch.compile the training step "
                        "(auto: when the rest of the session would run over 10 minutes; ~20 % faster on a "
                        "CPU after ~1.5 minutes of compiling).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing output files.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress output.")


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP, no_args_is_help=True)
    def train(
        data: Optional[Path] = _DATA,
        out: Path = _OUT,
        task: Optional[str] = _TASK,
        arch: Optional[str] = _ARCH,
        steps: Optional[int] = _STEPS,
        minutes: Optional[float] = _MINUTES,
        stop_at: Optional[int] = _STOP_AT,
        resume: Optional[Path] = _RESUME,
        patch: Optional[int] = _PATCH,
        batch_size: Optional[int] = _BATCH_SIZE,
        lr: Optional[float] = _LR,
        warmup: Optional[int] = _WARMUP,
        clip: Optional[float] = _CLIP,
        inverse_gain: Optional[float] = _INVERSE_GAIN,
        init_start: Optional[str] = _INIT_START,
        init_from: Optional[str] = _INIT_FROM,
        inverse_gain_every: Optional[int] = _INVERSE_GAIN_EVERY,
        inverse_probe: Optional[float] = _INVERSE_PROBE,
        loss: Optional[str] = _LOSS,
        low_sigma_weight: Optional[float] = _LOW_SIGMA_WEIGHT,
        condition: Optional[str] = _CONDITION,
        ema: Optional[float] = _EMA,
        seed: Optional[int] = _SEED,
        sigma: Optional[str] = _SIGMA,
        noise_protocol: NoiseProtocol = None,
        quality: Optional[str] = _QUALITY,
        subsampling: Subsampling = None,
        mask: Mask = None,
        hole_ratio: HoleRatio = None,
        val: Optional[Path] = _VAL,
        val_every: Optional[int] = _VAL_EVERY,
        val_crop: int = _VAL_CROP,
        val_seed: int = _VAL_SEED,
        checkpoint: Optional[Path] = _CHECKPOINT,
        checkpoint_every: Optional[int] = _CHECKPOINT_EVERY,
        log: Optional[Path] = _LOG,
        log_every: Optional[int] = _LOG_EVERY,
        device: DeviceTorchrun = "auto",
        dtype: TrainDtype = "auto",
        compile_mode: str = _COMPILE,
        overwrite: bool = _OVERWRITE,
        quiet: bool = _QUIET,
    ) -> None:
        with user_errors():
            given = _given(task=task, arch=arch, steps=steps, patch=patch, batch_size=batch_size, lr=lr,
                           warmup=warmup, clip=clip, ema=ema, seed=seed, inverse_gain=inverse_gain,
                           inverse_gain_every=inverse_gain_every, inverse_probe=inverse_probe,
                           init_start=init_start, init_from=init_from, loss=loss, low_sigma_floor=low_sigma_weight,
                           condition=condition, sigma=sigma, noise_protocol=noise_protocol, quality=quality,
                           subsampling=subsampling, mask=mask, hole_ratio=hole_ratio)
            session = _session(data=data, out=out, checkpoint=checkpoint, log=log, resume=resume, minutes=minutes,
                               stop_at=stop_at, val=val, val_every=val_every, val_crop=val_crop, val_seed=val_seed,
                               checkpoint_every=checkpoint_every, log_every=log_every, device=device, dtype=dtype,
                               compile=compile_mode, overwrite=overwrite, quiet=quiet)
            from ..train import train as run_training

            _print_result(run_training(session, given))


def _given(*, sigma, quality, mask, hole_ratio, **options) -> dict:
    """The TrainConfig fields the user set (the rest take the task's defaults, or the checkpoint's)."""
    given = {
        **options,
        "sigma": parse_range(sigma, float, "--sigma") if sigma is not None else None,
        "quality": parse_range(quality, int, "--quality") if quality is not None else None,
        "masks": tuple(parse_names(mask, "--mask")) if mask is not None else None,
        "hole_range": parse_range(hole_ratio, float, "--hole-ratio") if hole_ratio is not None else None,
    }
    return {k: v for k, v in given.items() if v is not None}


def _session(*, data, resume, val_every, checkpoint_every, log_every, val_crop, **options):
    """The Session, its options checked before ``irae_cli.train`` (and torch) is imported: a wrong one fails
    at once."""
    if data is None and resume is None:
        raise IraeError("DATA is required: a folder of training photos or a .safetensors pack")
    for name, value in (("--val-every", val_every), ("--checkpoint-every", checkpoint_every),
                        ("--log-every", log_every)):
        if value is not None and value < 0:
            raise IraeError(f"{name} must be >= 0, not {value}")
    if val_crop < 16:
        raise IraeError(f"--val-crop must be at least 16, not {val_crop}")
    check_compile_mode(options["compile"])
    from ..train import Session

    return Session(data=data, resume=resume, val_every=val_every, checkpoint_every=checkpoint_every,
                   log_every=log_every or None, val_crop=val_crop, **options)


def _print_result(result) -> None:
    if result.sha256 is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    planned = f"/{result.steps_planned}" if result.steps_planned else ""
    typer.echo(f"saved {one_line(result.out)} (sha256 {result.sha256[:12]}): step {result.steps}{planned}, "
               f"{result.patches_seen:,} patches, {result.minutes:.2f} min on {result.device}; "
               f"stopped: {result.stopped}")
    if result.val:
        levels = "; ".join(f"{name} {v['psnr_rgb_u8']:.2f} dB (input {v['input_psnr_rgb_u8']:.2f})"
                           for name, v in result.val.items())
        typer.echo(f"validation psnr_rgb_u8: {levels}")
    typer.echo(f"checkpoint {one_line(result.checkpoint)}; log {one_line(result.log)}")
