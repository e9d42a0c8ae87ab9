"""The checkpoint file: a safetensors file of model, EMA, optimiser and generator states with JSON metadata
(config, step, run id...), so that ``--resume`` continues a run exactly; also the weights ``--init-from``
starts from.  No pickle anywhere: the optimiser state is flattened into tensors plus JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import __version__
from ..errors import IraeError
from ..files import atomic_save_safetensors
from ..weights import CHECKPOINT_FORMAT
from .config import TrainConfig

CHECKPOINT_VERSION = "1"


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state -> (tensors named ``optim.<param>.<key>``, JSON-able rest), no pickle."""
    sd = opt.state_dict()
    tensors, extra = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = val
            else:
                extra[f"{pid}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "extra": extra}


def unflatten_optimizer(tensors: dict, rest: dict) -> dict:
    state: dict = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for name, val in rest.get("extra", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(path: Path, *, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer,
                    rng: dict, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_rest = flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "irae_version": __version__,
                "optimizer": json.dumps(opt_rest)}
    metadata.update({k: json.dumps(v, default=str) for k, v in meta.items()})
    atomic_save_safetensors(tensors, path, metadata)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint -> {"tensors": {...}, "meta": {decoded JSON fields}}; one-line errors on bad files."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise IraeError(f"{path}: checkpoint not found; give the .ckpt.safetensors file an earlier run wrote")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        from ..weights import unreadable_safetensors

        raise IraeError(unreadable_safetensors(path, e, "checkpoint")) from None
    if raw.get("format") != CHECKPOINT_FORMAT:
        hint = " (that is a weights file; resume from the .ckpt.safetensors next to it)" \
            if raw.get("format") == "irae-weights" else ""
        raise IraeError(f"{path}: not an irae training checkpoint{hint}")
    meta = _decode_metadata(path, raw)
    problem = _checkpoint_problem(tensors, meta)
    if problem:
        raise IraeError(f"{path}: unusable checkpoint: {problem}; the file was damaged or edited -- resume from "
                        f"another checkpoint or start a new run")
    return {"tensors": tensors, "meta": meta}


def _decode_metadata(path: Path, raw: dict) -> dict:
    meta = {}
    for k, v in raw.items():
        if k in ("format", "format_version", "irae_version"):
            meta[k] = v
            continue
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError as e:
            raise IraeError(f"{path}: checkpoint metadata field {k!r} is not valid JSON ({e.msg}); the file "
                            f"was damaged or edited -- resume from another checkpoint or start a new run") from None
    return meta


def _checkpoint_problem(tensors: dict, meta: dict) -> str | None:
    """What in a checkpoint would make --resume fail half-way (wrong fields, tensor shapes), or None."""
    from ..model import config_from_dict, create_model

    kinds = {"config": dict, "model_config": dict, "step": int, "patches_seen": int, "train_seconds": (int, float),
             "run_id": str, "data": dict, "optimizer": dict}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"metadata field {key!r} is missing or of the wrong type"
    try:
        config = TrainConfig.from_dict(meta["config"])
        model = create_model(config_from_dict(meta["model_config"]))
    except (KeyError, ValueError, TypeError, AttributeError, IraeError) as e:
        return f"metadata fields 'config'/'model_config' do not describe a model ({str(e).splitlines()[0]})"
    problem = _weights_problem(tensors, model, config) or _optimizer_problem(tensors, meta, list(model.parameters()))
    if problem:
        return problem
    torch_state = tensors.get("rng.torch")
    if torch_state is None or torch_state.dtype != torch.uint8 or torch_state.shape != torch.get_rng_state().shape:
        return "the random-generator state rng.torch is missing or malformed"
    return None


def _weights_problem(tensors: dict, model: torch.nn.Module, config: TrainConfig) -> str | None:
    expected = model.state_dict()
    for prefix in ("model.", "ema.") if config.ema > 0 else ("model.",):
        got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(got) != set(expected):
            missing = sorted(set(expected) - set(got))
            return f"the {prefix[:-1]} tensors do not match the {config.arch} model ({len(missing)} missing, " \
                   f"{len(set(got) - set(expected))} unexpected)"
        for k, v in expected.items():
            if tuple(got[k].shape) != tuple(v.shape):
                return f"tensor {prefix}{k} has shape {tuple(got[k].shape)}, the {config.arch} model needs " \
                       f"{tuple(v.shape)}"
    return None


def _optimizer_problem(tensors: dict, meta: dict, params: list) -> str | None:
    groups = meta["optimizer"].get("param_groups")
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
            and len(groups[0].get("params", [])) == len(params)):
        return "the optimizer state does not match the model's parameters"
    for name, t in tensors.items():
        if name.startswith("optim."):
            parts = name.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
                return f"optimizer tensor {name} belongs to no parameter of the model"
            if parts[2] in ("exp_avg", "exp_avg_sq") and tuple(t.shape) != tuple(params[int(parts[1])].shape):
                return f"optimizer tensor {name} has shape {tuple(t.shape)}, its parameter " \
                       f"{tuple(params[int(parts[1])].shape)}"
    return None


def read_run_id(path: Path) -> str | None:
    """The run id recorded in a file a run wrote (checkpoint, weights or JSON log); None if there is none."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "run_id" in meta:  # a checkpoint: every metadata field is JSON
            return json.loads(meta["run_id"])
        return json.loads(meta.get("training", "{}")).get("run_id")  # weights: inside the training record
    except Exception:
        pass
    try:
        return json.loads(Path(path).read_text()).get("run_id")
    except Exception:
        return None


def load_init_weights(config: TrainConfig) -> tuple[dict, dict]:
    """(what they were, state dict) of --init-from's weights, which must be of the run's preset; blind weights
    of it start a conditioned run widened (``widen_for_condition``: the same function until trained)."""
    from ..model import config_to_json, resolve_config, widen_for_condition
    from ..weights import load_weights

    wanted = config.model_config()
    try:
        loaded = load_weights(config.init_from)
    except Exception as e:  # WeightsError or a missing file: one line naming the file
        raise IraeError(f"--init-from: {e}") from None
    held = loaded.model.config
    widen = config.condition != "none" and getattr(held, "condition", None) == "none"
    if widen:
        held = resolve_config(held, condition=config.condition)
    had = getattr(held, "condition", None)
    if had not in (None, config.condition) and config_to_json(resolve_config(held, condition=config.condition)) \
            == config_to_json(wanted):
        raise IraeError(f"--init-from {config.init_from}: holds a model conditioned on {had}; add --condition {had} "
                        f"(a conditioned model cannot be made blind)")
    if config_to_json(held) != config_to_json(wanted):
        was = (loaded.training or {}).get("arch") or "another"
        raise IraeError(f"--init-from {config.init_from}: holds a {was} model, not --arch {config.arch}; "
                        f"pass weights of the {config.arch} preset, or --arch {was}")
    training = loaded.training or {}
    record = {"path": str(config.init_from), "sha256": loaded.sha256, "task": loaded.task,
              "arch": training.get("arch"), "patches_seen": training.get("patches_seen"),
              "minutes": training.get("minutes"), "device": training.get("device")}
    if widen:
        record["widened_to"] = config.condition
        return record, widen_for_condition(loaded.model.state_dict(), config.condition)
    return record, loaded.model.state_dict()


# --------------------------------------------------------------------------- resuming from a checkpoint

def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def resumed_model(ckpt: dict, path: Path) -> torch.nn.Module:
    """The checkpoint's model, built from the model config stored with it (not from the preset's name)."""
    from ..model import config_from_dict, create_model

    model = create_model(config_from_dict(ckpt["meta"]["model_config"]))
    model.load_state_dict(_prefixed(ckpt["tensors"], "model."))
    if not model.is_initialized:
        raise IraeError(f"{path}: checkpoint holds an uninitialised model; start a fresh run")
    return model


def restore_optimisation(ckpt: dict, ema, optimizer: torch.optim.Optimizer) -> None:
    if ema is not None:
        ema.load_state_dict(_prefixed(ckpt["tensors"], "ema."))
    optimizer.load_state_dict(unflatten_optimizer(ckpt["tensors"], ckpt["meta"]["optimizer"]))


def restore_generators(ckpt: dict, degrader, rank: int, world: int, note) -> None:
    """The global and the degrader's generators as they were: a replay when the number of processes is the
    same; new, per-rank distinct streams (and a note saying so) when it is not."""
    tensors, meta = ckpt["tensors"], ckpt["meta"]
    torch.set_rng_state(tensors["rng.torch"])
    saved_world = int(meta.get("world_size", 1))
    noise = tensors.get(f"rng.noise.rank{rank}")
    if saved_world == world:
        degrader.load_rng_state({"data": tensors[f"rng.data.rank{rank}"], "host": tensors[f"rng.host.rank{rank}"],
                                 "noise": noise})
        return
    degrader.load_rng_state({"noise": noise})
    degrader.reseed(int(meta["step"]), rank)
    note(f"irae: note: the checkpoint was written by {saved_world} process(es), this run has {world}; "
         f"patch sampling continues from new random streams (the run is no longer a replay)")
