"""Training: random patches of real photos, degraded on the fly, L1 to the clean patch.

``train(session, given)`` is the whole of ``irae train`` (``trainer.Trainer``); the pieces it uses are
plain objects that the tests use directly: ``config`` (settings, schedule), ``data`` (pixels, patch
sampler), ``degrader``, ``loss``, ``precision`` (``--dtype``, EMA), ``validation``, ``checkpoint``,
``outputs`` (the files a run writes), ``divergence`` (roll-back guard).

What a run guarantees
---------------------
* **Reproducible.** Every random draw (which image, where, which flip or rotation, sigma, JPEG quality,
  mask) comes from two ``torch.Generator``s seeded from ``--seed`` (one on the data's device, one on the
  host), never from global state.  A run's numbers are a function of (config, data, seed, device).
* **Resumable exactly.** The checkpoint holds model, EMA, optimiser state, step, generator states and
  the config; the learning rate is a pure function of the step, so "stop after k steps, resume, continue
  to N" gives the same weights as an uninterrupted N-step run (bit-exact on the CPU; on a GPU up to
  cuDNN's non-deterministic kernels).  The ActNorm initialisation runs once on the first batch of a
  fresh run and never on resume.
* **Time-bounded.** ``--minutes`` counts wall-clock time from the start of the command (data loading and
  periodic validation included) and stops early enough to leave room for the final validation and save,
  estimated from the last validation (or from the training throughput before the first one).  Every
  invocation makes at least one step (a fresh model must be initialised before it is saved).  With
  ``--minutes`` alone, the schedule length is estimated from the speed of steps 2-12, and again at 10, 25
  and 50 % of the budget, and stored, so the cosine reaches its floor near the end of the budget; a
  resumed run keeps that length.
* **Multi-GPU.** Under ``torchrun`` (WORLD_SIZE > 1) the same command trains with
  DistributedDataParallel: ``--batch-size`` is per process, each rank draws its own patches from its own
  seeded generators, rank 0 initialises the ActNorms and broadcasts every parameter and buffer, and only
  rank 0 validates and writes files.  Checkpoints hold every rank's generator states, so a resume with
  the same number of processes is a replay too.
"""

from __future__ import annotations

from ..distributed import init_distributed
from ..distributed import rank_device as train_device
from ..errors import IraeError
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, flatten_optimizer, load_checkpoint, save_checkpoint,
                         unflatten_optimizer)
from .config import LR_FLOOR, Session, TrainConfig, build_config, lr_at, warmup_steps
from .data import PatchSampler, TrainData, load_training_data
from .degrader import MASK_BANK_SIZE, Degrader
from .loss import INVERSE_PROBE, inverse_gain_penalty, training_loss
from .outputs import check_output_space, refuse_foreign_outputs, derived_paths
from .precision import EMA
from .runlog import LOG_FORMAT, TrainResult
from .trainer import CALIBRATION_STEPS, Trainer, train
from .validation import Validator

__all__ = [
    "CALIBRATION_STEPS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "EMA", "INVERSE_PROBE", "LOG_FORMAT",
    "LR_FLOOR", "MASK_BANK_SIZE", "Degrader", "IraeError", "PatchSampler",
    "Session", "TrainConfig", "TrainData", "TrainResult", "Trainer", "Validator",
    "build_config", "check_output_space", "refuse_foreign_outputs", "derived_paths",
    "flatten_optimizer", "init_distributed", "inverse_gain_penalty",
    "load_checkpoint", "load_training_data", "lr_at", "save_checkpoint", "train",
    "train_device", "training_loss", "unflatten_optimizer", "warmup_steps",
]
