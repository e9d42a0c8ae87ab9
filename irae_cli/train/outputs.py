"""The three files a run writes (weights, checkpoint, JSON log): their names, the refusal to replace files of
another run, the room they need, and writes that fail (disk full) without stopping the others."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import IraeError
from ..files import atomic_write_text
from ..weights import CHECKPOINT_SUFFIX
from .checkpoint import read_run_id, save_checkpoint
from .config import Session, TrainConfig


def derived_paths(session: Session) -> tuple[Path, Path, Path]:
    out = Path(session.out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    ckpt = Path(session.checkpoint) if session.checkpoint else out.with_name(stem + CHECKPOINT_SUFFIX)
    log = Path(session.log) if session.log else out.with_name(f"{stem}.log.json")
    if len({out.resolve(), ckpt.resolve(), log.resolve()}) < 3:
        raise IraeError(f"--out, --checkpoint and --log must be three different files ({out}, {ckpt}, {log})")
    return out, ckpt, log


def refuse_foreign_outputs(out: Path, ckpt: Path, log: Path, *, overwrite: bool, run_id: str | None,
                  resume: Path | None) -> dict | None:
    """Refuse to replace files this run does not own; returns the earlier log when resuming into it."""
    if out.is_dir():
        raise IraeError(f"--out {out}: is a folder; give a file name such as {out / 'model.safetensors'}")
    problems = []
    if out.exists() and not overwrite and not (run_id and read_run_id(out) == run_id):
        problems.append(str(out))
    if ckpt.exists() and not overwrite and not (resume and ckpt.resolve() == Path(resume).resolve()) \
            and not (run_id and read_run_id(ckpt) == run_id):
        problems.append(str(ckpt))
    earlier_log = None
    if log.exists():
        if run_id and read_run_id(log) == run_id:
            earlier_log = json.loads(log.read_text())
        elif not overwrite:
            problems.append(str(log))
    if problems:
        hint = f"; to continue that run, add --resume {ckpt}" if str(ckpt) in problems and not resume else ""
        raise IraeError(f"{', '.join(problems)}: already exist(s); refusing to overwrite (use --overwrite, "
                        f"or another --out{hint})")
    return earlier_log


def check_output_space(out: Path, ckpt: Path, log: Path, config: TrainConfig, model_config: dict | None) -> None:
    """Before training: the output folders are writable and have room for the weights, checkpoint and log.

    Also removes what a killed earlier run left of these three files'
    temporary copies (of a process that is gone; ``.NAME.tmp-PID`` from irae before its one atomic writer).
    """
    from ..files import folder_problem, remove_stale_temp_files

    for path, what in ((out, "--out"), (ckpt, "--checkpoint"), (log, "--log")):
        problem = folder_problem(path.parent, f"{what} folder")
        if problem:
            raise IraeError(problem)
    for folder in {p.parent for p in (out, ckpt, log) if p.parent.is_dir()}:
        remove_stale_temp_files([folder], of=[p.name for p in (out, ckpt, log) if p.parent == folder])
    _check_free_space(_bytes_needed(out, ckpt, log, config, model_config))


def _bytes_needed(out: Path, ckpt: Path, log: Path, config: TrainConfig, model_config: dict | None) -> dict:
    from ..model import config_from_dict, create_model

    model = create_model(config_from_dict(model_config) if model_config else config.model_config())
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Tensors only (metadata adds a few KB): weights = the model; checkpoint = model, EMA, Adam's two moments.
    return {out: state, ckpt: state * (2 if config.ema > 0 else 1) + 2 * params, log: 4096}


def _check_free_space(needs: dict) -> None:
    from ..files import existing_ancestor, free_bytes

    by_fs: dict[int, list[Path]] = {}
    for path in needs:
        try:
            by_fs.setdefault(os.stat(existing_ancestor(path.parent)).st_dev, []).append(path)
        except OSError:
            continue
    for paths in by_fs.values():
        free = free_bytes(paths[0].parent)
        need = sum(needs[p] for p in paths)
        if free is not None and free < need:
            names = ", ".join(str(p) for p in paths)
            raise IraeError(f"{paths[0].parent}: only {_kib(free)} free, but {names} need{'s' * (len(paths) == 1)} "
                            f"about {_kib(need)}; free some space or choose another folder (nothing was trained)")


def _kib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


class SaveFailures:
    """Writes that failed (disk full, ...): noted once per file and reason, reported together at the end,
    so that one file that does not fit never stops training or the smaller files from being saved."""

    def __init__(self, echo) -> None:
        self.echo = echo
        self.failed: dict[Path, str] = {}

    @contextmanager
    def attempt(self, path: Path):
        from safetensors import SafetensorError

        from ..errors import io_reason

        try:
            yield
            self.failed.pop(path, None)
        except (OSError, SafetensorError) as e:
            reason = io_reason(e)
            if self.failed.get(path) != reason:
                self.echo(f"irae: warning: {path}: cannot write ({reason}); the earlier copy, if any, is intact")
            self.failed[path] = reason

    def raise_if_any(self, paths: tuple[Path, ...], step: int) -> None:
        from ..errors import SaveError

        if not self.failed:
            return
        saved = [p for p in paths if p not in self.failed]
        failed = "; ".join(f"{p}: cannot write ({reason})" for p, reason in self.failed.items())
        kept = f"saved: {', '.join(map(str, saved))}" if saved else "nothing was saved"
        raise SaveError(f"{failed} -- {kept} (step {step}); free some space or choose another --out, then train "
                        f"again or --resume from an intact checkpoint")


class RunFiles:
    """Writes the run's three files (rank 0 only; the other ranks write nothing) and keeps its JSON log."""

    def __init__(self, out: Path, checkpoint: Path, log_path: Path, *, main: bool, note) -> None:
        self.out, self.checkpoint, self.log_path, self.main = out, checkpoint, log_path, main
        self.failures = SaveFailures(note)
        self.log: dict = {}

    def write_log(self) -> None:
        if self.main:
            with self.failures.attempt(self.log_path):
                atomic_write_text(self.log_path, json.dumps(self.log, indent=1, default=str) + "\n")

    def write_checkpoint(self, **parts) -> None:
        """``parts``: save_checkpoint's model, ema, optimizer, rng and meta."""
        if self.main:
            with self.failures.attempt(self.checkpoint):
                save_checkpoint(self.checkpoint, **parts)

    def write_weights(self, model, config: TrainConfig, task_params: dict, summary: dict) -> str | None:
        """The weights (tried even when the larger checkpoint failed), then the log with the summary."""
        from ..weights import save_weights

        sha = None
        with self.failures.attempt(self.out):
            sha = save_weights(model, self.out, task=config.task, task_params=task_params, training=summary)
        self.log["summary"] = {**summary, "out": str(self.out), "sha256": sha}
        self.write_log()
        return sha

    def raise_if_any_failed(self, step: int) -> None:
        self.failures.raise_if_any((self.out, self.checkpoint, self.log_path), step)
