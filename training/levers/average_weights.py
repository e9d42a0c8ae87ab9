"""Average the weights of runs that share a start: a uniform model soup (Wortsman et al., ICML 2022).

    python training/levers/average_weights.py OUT.safetensors A.safetensors B.safetensors [...]

Schedules trained side by side from the same weights (one per free core, say, with different
seeds) stay in one basin, so their mean is a model too, often better than each; for an IRAE it is
still exactly invertible (every layer is, whatever its weights).  The files must share preset,
task and task parameters; the first file's training summary is kept, with the sources listed
under ``averaged``.  The result is checked like any weights file when it is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from irae_cli.errors import WeightsError  # noqa: E402
from irae_cli.weights import load_weights, save_weights  # noqa: E402


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (in float64, cast back); other tensors must agree."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
        elif all(torch.equal(s[key], first) for s in states[1:]):
            out[key] = first
        else:
            raise ValueError(f"non-float tensor {key!r} differs between the files: not one start")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("weights", nargs="+")
    args = ap.parse_args(argv)
    if len(args.weights) < 2:
        ap.error("give at least two weights files to average")
    if Path(args.out).exists():
        ap.error(f"{args.out}: exists; remove it first (weights are never overwritten here)")
    try:
        loaded = [load_weights(p, device="cpu") for p in args.weights]
    except WeightsError as e:  # a missing, damaged or foreign file: its one-line reason
        ap.error(str(e))
    first = loaded[0]
    for other in loaded[1:]:
        same = (other.model.config == first.model.config, other.task == first.task,
                other.task_params == first.task_params)
        if not all(same):
            ap.error(f"{other.path}: preset, task or task parameters differ from {first.path}")
    try:
        first.model.load_state_dict(average_states([w.model.state_dict() for w in loaded]))
    except ValueError as e:
        ap.error(str(e))
    sources = [{"file": w.path.name, "sha256": w.sha256, "steps": w.training.get("steps")} for w in loaded]
    sha = save_weights(first.model, args.out, task=first.task, task_params=first.task_params,
                       training={**first.training, "averaged": sources})
    print(f"{args.out}: the mean of {len(loaded)} files, sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
