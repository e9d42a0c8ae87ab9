"""What a run is: the settings that decide its weights (TrainConfig), the per-invocation ones (Session),
their defaults and checks, and the schedule that is a pure function of the step.

Learning rate: linear warm-up over ``--warmup`` steps (default 2 % of the run), then cosine decay to
``LR_FLOOR`` x ``--lr`` at ``--steps``; because it depends on the step alone, a resumed run follows the
same curve.  The EMA decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so that short runs are not
dominated by the initial weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..defaults import DEFAULTS, NOISE_PROTOCOL_ALIASES, NOISE_PROTOCOLS
from ..degradations import MASK_KINDS, SUBSAMPLING
from ..errors import IraeError
from ..tasks import get_task
from .loss import LOSSES

LR_FLOOR = 0.01  # cosine ends at this fraction of --lr
PROVISIONAL_WARMUP = 100  # warm-up length used until the schedule length is known
DEFAULT_INVERSE_GAIN = 1000.0  # measured: keeps the fp32 round trip far inside half an 8-bit level (README)
DEFAULT_INVERSE_GAIN_EVERY = 4


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the weights a run produces (stored in checkpoints)."""

    task: str = "denoise"
    arch: str = "paper-denoise"
    steps: int | None = None  # schedule length; None = estimated from --minutes
    patch: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int | None = None  # None = 2 % of steps
    clip: float = 10.0
    ema: float = 0.999
    seed: int = 0
    sigma: tuple[float, float] = DEFAULTS.sigma_range
    noise_protocol: str = DEFAULTS.noise_protocol  # what restore sees: real noisy files are clipped 8-bit
    quality: tuple[int, int] = DEFAULTS.quality_range
    subsampling: str = DEFAULTS.subsampling
    masks: tuple[str, ...] = DEFAULTS.masks
    hole_range: tuple[float, float] = DEFAULTS.hole_range
    # Largest gain allowed to the inverse (degrade) direction, measured by finite
    # differences each step and enforced by a hinge penalty; 0 = off.  The inverse of a
    # denoiser amplifies perturbations of its output, and fp32 rounding of the restored
    # image (~6e-8) times that gain is the round-trip error: unpenalised, 32 minutes of
    # CPU training reached a gain of ~4,000 and a 6e-4 round trip (README, "Precision").
    inverse_gain: float = 0.0
    # The penalty's probe costs a whole extra inverse pass and its backward (~2x a step), while
    # the gain drifts slowly: probing every N-th step, weighted by N, buys the bound at ~1/N of it.
    inverse_gain_every: int = 1
    # Size of the probe's random step on the restored patch (train/loss.py): 1e-3 measures the gain over
    # that distance; a small one (1e-5) the slope that fp32 rounding meets, which can be several times higher.
    inverse_probe: float = 1e-3
    # How an IRAE starts (model.initialize): "data" = each flow from its own data and rotations;
    # "identity" = the decoder a copy of the encoder, so the untrained model returns its input.
    init_start: str = "data"
    # Start from trained weights of the same preset (fine-tuning, another task, a new schedule or batch
    # size) instead of a fresh initialisation; the path as given, its sha256 goes to the summary.
    init_from: str | None = None
    loss: str = "l1"  # l1 (the paper's) or l2; checkpoints made before the option trained with l1
    # denoise: weight each patch's loss by 1/max(sigma, this) (0 = off, every patch alike).  A blind
    # model's L1 grows with sigma, so heavy noise dominates the gradient; this evens out the levels.
    low_sigma_floor: float = 0.0
    # "sigma" (denoise) / "quality" (jpeg) tells every coupling net the true noise level / JPEG quality of
    # its patch (model/condition.py); checkpoints made before the option trained blind models ("none").
    condition: str = "none"

    def __post_init__(self) -> None:
        # One vocabulary: checkpoints written before it say "paper" for what is now "float".
        object.__setattr__(self, "noise_protocol", NOISE_PROTOCOL_ALIASES.get(self.noise_protocol,
                                                                              self.noise_protocol))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_config(self):
        """The model this run trains: the ``arch`` preset, conditioned as ``condition`` says."""
        from ..model import resolve_config

        return resolve_config(self.arch, condition=self.condition) if self.condition != "none" \
            else resolve_config(self.arch)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        for key in ("sigma", "quality", "masks", "hole_range"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def degradation(self) -> dict:
        """The ranges that describe this run's training degradation (weights metadata)."""
        if self.task == "denoise":
            return {"sigma": list(self.sigma), "noise_protocol": self.noise_protocol}
        if self.task == "jpeg":
            return {"quality": list(self.quality), "subsampling": self.subsampling}
        return {"masks": list(self.masks), "hole_range": list(self.hole_range)}


@dataclass
class Session:
    """Per-invocation settings: where things are and how long to run; not part of the math."""

    data: Path | None = None
    out: Path | None = None
    checkpoint: Path | None = None
    log: Path | None = None
    resume: Path | None = None
    minutes: float | None = None
    stop_at: int | None = None
    val: Path | None = None
    val_every: int | None = None
    val_crop: int = 512
    val_seed: int = 0
    checkpoint_every: int | None = None
    log_every: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: str = "auto"  # auto | on | off: torch.compile the training passes (train/compiled.py)
    overwrite: bool = False
    quiet: bool = False
    progress: bool | None = None  # None = a live bar when stderr is a terminal
    echo: object = None  # callable(str) for one-line notices; default: stderr


TUNABLE = {f.name for f in dataclasses.fields(TrainConfig)}


def default_lr(task: str) -> float:
    return 1e-4 if task == "inpaint" else 1e-3


def build_config(given: dict, device: torch.device) -> TrainConfig:
    """Fill what the user did not give with the task's defaults and check every value."""
    from ..model import PRESETS, list_models, model_info

    task = get_task(given.get("task") or "denoise")
    unknown = set(given) - TUNABLE
    if unknown:
        raise IraeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    d = {k: v for k, v in given.items() if v is not None}
    d["task"] = task.name
    d.setdefault("arch", task.default_arch)
    d.setdefault("patch", 128 if task.needs_mask else 64)
    d.setdefault("batch_size", 64 if device.type == "cuda" else 8)
    d.setdefault("lr", default_lr(task.name))
    if d["arch"] in PRESETS and model_info(d["arch"]).invertible:
        d.setdefault("inverse_gain", DEFAULT_INVERSE_GAIN)
        d.setdefault("inverse_gain_every", DEFAULT_INVERSE_GAIN_EVERY)
    # Inpainting starts from its classical pre-fill, which only an identity start preserves.
    d.setdefault("init_start", "identity" if task.needs_mask else "data")
    for key, value in task.train_defaults.items():  # only the task's own ranges are part of its config
        d.setdefault(key, value)
    config = TrainConfig.from_dict(d)
    if config.arch not in list_models():
        raise IraeError(f"--arch {config.arch!r} is not a known model; use one of: {', '.join(list_models())}")
    validate_config(config)
    return config


def validate_config(c: TrainConfig) -> None:
    """One-line IraeError naming the first option out of range."""
    problem = _optimisation_problem(c) or _model_problem(c) or _degradation_problem(c)
    if problem:
        raise IraeError(problem)


def _optimisation_problem(c: TrainConfig) -> str | None:
    if c.steps is not None and c.steps < 1:
        return f"--steps must be at least 1, not {c.steps}"
    if c.batch_size < 1:
        return f"--batch-size must be at least 1, not {c.batch_size}"
    if c.inverse_gain != 0 and not (c.inverse_gain >= 1 and math.isfinite(c.inverse_gain)):
        return f"--inverse-gain must be 0 (off) or at least 1, not {c.inverse_gain}"
    if c.init_start not in ("data", "identity"):
        return f"--init-start must be data or identity, not {c.init_start!r}"
    if c.low_sigma_floor < 0 or (c.low_sigma_floor > 0 and c.task != "denoise"):
        return f"--low-sigma-weight must be > 0 and is for --task denoise, not {c.low_sigma_floor:g} for {c.task}"
    if c.loss not in LOSSES:
        return f"--loss must be one of {', '.join(LOSSES)}, not {c.loss!r}"
    if not 1e-7 <= c.inverse_probe <= 1e-2:
        return f"--inverse-probe must lie within 1e-7 to 1e-2, not {c.inverse_probe}"
    if c.inverse_gain_every < 1:
        return f"--inverse-gain-every must be at least 1, not {c.inverse_gain_every}"
    if not (c.lr > 0 and math.isfinite(c.lr)):
        return f"--lr must be a positive number, not {c.lr}"
    if c.warmup is not None and c.warmup < 0:
        return f"--warmup must be >= 0 steps, not {c.warmup}"
    if c.clip < 0:
        return f"--clip must be >= 0 (0 = no clipping), not {c.clip}"
    if not 0 <= c.ema < 1:
        return f"--ema must be in [0, 1) (0 = off), not {c.ema}"
    return None


def _model_problem(c: TrainConfig) -> str | None:
    from ..model import model_info
    from ..model.config import CONDITION_TASKS, CONDITIONS

    info = model_info(c.arch)
    if c.condition not in CONDITIONS:
        return f"--condition must be one of {', '.join(CONDITIONS)}, not {c.condition!r}"
    if c.condition != "none" and (c.task != CONDITION_TASKS[c.condition] or not info.invertible):
        return (f"--condition {c.condition} is for --task {CONDITION_TASKS[c.condition]} with an IRAE preset, "
                f"not {c.task} with {c.arch}")
    if c.patch < 8 or c.patch % info.size_multiple:
        return f"--patch {c.patch} must be at least 8 and a multiple of {info.size_multiple} for --arch {c.arch}"
    try:  # the task says which models it can run
        get_task(c.task).default_task_params(info.channels)
    except IraeError:
        return f"--arch {c.arch} takes the mask as a 4th channel: it is for --task inpaint only"
    if info.channels == 4 and c.init_start != "identity":
        return f"--arch {c.arch} starts from its input (--init-start identity): its mask channel has no clean target"
    return None


def _degradation_problem(c: TrainConfig) -> str | None:
    if c.noise_protocol not in NOISE_PROTOCOLS:
        return (f"--noise-protocol must be one of {', '.join(NOISE_PROTOCOLS)} ('paper' is another name for "
                f"float), not {c.noise_protocol!r}")
    if c.sigma[1] > 255:
        return f"--sigma {c.sigma[0]:g}-{c.sigma[1]:g} is beyond the 0-255 scale"
    if not 1 <= c.quality[0] <= c.quality[1] <= 100:
        return f"--quality {c.quality[0]}-{c.quality[1]} must lie within 1-100"
    if c.subsampling not in SUBSAMPLING:
        return f"--subsampling must be one of {', '.join(SUBSAMPLING)}, not {c.subsampling!r}"
    if not c.masks or any(m not in MASK_KINDS for m in c.masks):
        return f"--mask {','.join(c.masks)!r}: use one or more of {', '.join(MASK_KINDS)}"
    if not 0 < c.hole_range[1] <= 0.9:
        return f"--hole-ratio {c.hole_range[0]}-{c.hole_range[1]} must lie within 0-0.9 with a positive top"
    return None


# How long and how often, not what is learned: what --resume lets change, and what it then means.
RESUME_MAY_CHANGE = {"steps": "the learning-rate schedule now runs over {} steps",
                     "inverse_gain_every": "the inverse gain is probed every {} steps from now on"}


def merge_resumed_config(saved: TrainConfig, given: dict, echo) -> TrainConfig:
    """A resumed run keeps its checkpoint's settings; --steps may change (the schedule then follows it)."""
    conflicts = []
    for key, value in given.items():
        if value is None or key in RESUME_MAY_CHANGE:
            continue
        have = getattr(saved, key)
        norm = tuple(value) if isinstance(value, list) else value
        if key == "noise_protocol":
            norm = NOISE_PROTOCOL_ALIASES.get(norm, norm)
        if norm != have:
            conflicts.append(f"{key} {value!r} (checkpoint: {have!r})")
    if conflicts:
        raise IraeError("a resumed run keeps its checkpoint's settings; these differ: " + "; ".join(conflicts)
                        + ". Drop them, or start a new run without --resume")
    for key, effect in RESUME_MAY_CHANGE.items():
        value, had = given.get(key), getattr(saved, key)
        if value is not None and value != had:
            echo(f"irae: note: --{key.replace('_', '-')} {value} differs from the checkpoint's {had}; "
                 f"{effect.format(value)} (the run is an extension, not a replay)")
            saved = dataclasses.replace(saved, **{key: value})
            validate_config(saved)
    return saved


def warmup_steps(c: TrainConfig) -> int:
    if c.warmup is not None:
        return c.warmup
    if c.steps is None:
        return PROVISIONAL_WARMUP
    return max(1, round(0.02 * c.steps))


def lr_at(step: int, c: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warm-up, then cosine to LR_FLOOR x lr."""
    warm = warmup_steps(c)
    if step < warm:
        return c.lr * (step + 1) / warm
    if c.steps is None or c.steps <= warm:
        return c.lr
    p = min(1.0, (step - warm) / max(1, c.steps - warm))
    return c.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))


def ema_decay_at(step: int, decay: float) -> float:
    return min(decay, (1 + step) / (10 + step))
