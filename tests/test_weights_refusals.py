"""Weights files irae refuses, as a user meets them: one line naming the file and what to do, exit 2, no output.

A shipped file missing from its folder, weights holding NaN or infinity, and a training checkpoint given
where weights are asked for.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from irae_cli.errors import WeightsError
from irae_cli.imageio import read_image
from irae_cli.model import create_model
from irae_cli.weights import load_weights, register, save_weights

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import one_error_line, rewrite_safetensors  # noqa: E402
from util import irae as run_irae

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a shared machine: oversubscribed torch threads are many times slower


def irae(*args, env=None):
    return run_irae(*args, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    x = torch.stack([read_image(DATA / "astronaut_128.png")[0]])
    model = create_model("tiny")
    model.initialize(x, x)
    save_weights(model, d / "tiny.safetensors", task="denoise")
    return d / "tiny.safetensors"


def restore_into(tmp_path: Path, *extra, env=None):
    out = tmp_path / "out.png"
    r = irae("restore", "--task", "denoise", DATA / "coffee_128.png", out, *extra, env=env)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and not out.exists(), r.stderr
    return r


# --------------------------------------------------------------------------- B8: a shipped file is missing

@pytest.mark.slow
def test_shipped_weights_missing_from_their_folder_say_how_to_get_them_back(tiny, tmp_path):
    shipped = tmp_path / "weights"
    shipped.mkdir()
    shutil.copy(tiny, shipped / "tiny.safetensors")
    register("tiny-denoise", shipped / "tiny.safetensors", task="denoise", weights_dir=shipped)
    (shipped / "tiny.safetensors").unlink()  # a partial copy of the folder: the index without its file

    missing = str(shipped / "tiny.safetensors")
    with pytest.raises(WeightsError, match="missing"):
        load_weights("tiny-denoise", weights_dir=shipped)
    for extra in ([], ["--weights", "tiny-denoise"]):  # the task's default, and by name
        r = restore_into(tmp_path, *extra, env={"IRAE_WEIGHTS_DIR": str(shipped)})
        line = one_error_line(r, missing, "'tiny-denoise'", "missing")
        assert "restore the file" in line and "reinstall irae" in line


# --------------------------------------------------------------------------- B11: NaN or infinity in a tensor

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_infinity_are_refused_naming_the_tensor(tiny, tmp_path, value):
    from safetensors import safe_open

    with safe_open(str(tiny), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith("log_scale"))
    bad = rewrite_safetensors(tiny, tmp_path / "bad.safetensors", tensor_changes={
        name: lambda t: torch.full_like(t, value)})  # metadata kept: only the numbers are damaged

    with pytest.raises(WeightsError, match=name):
        load_weights(bad)
    r = restore_into(tmp_path, "--weights", bad)
    line = one_error_line(r, str(bad), repr(name))
    assert ("NaN" if value != value else "infinite") in line


# --------------------------------------------------------------------------- B14: a checkpoint as weights

@pytest.mark.slow
def test_a_training_checkpoint_given_as_weights_names_the_weights_of_its_run(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / "astronaut_128.png", photos / "astronaut.png")
    out = tmp_path / "run.safetensors"
    r = irae("train", photos, "--arch", "tiny", "--steps", "2", "--patch", "16", "--batch-size", "2",
             "--compile", "off", "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "run.ckpt.safetensors"

    r = restore_into(tmp_path, "--weights", ckpt)
    line = one_error_line(r, str(ckpt), "training checkpoint", "irae train --resume", str(out))
    assert "without irae metadata" not in line

    out.unlink()  # a run killed before it wrote its weights: only resuming it gives them
    with pytest.raises(WeightsError, match=r"irae train --resume .*run\.ckpt\.safetensors"):
        load_weights(ckpt)
