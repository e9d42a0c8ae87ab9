"""Inpainting models that see their mask: a 4th channel beside the pre-filled image, through every command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irae_cli.errors import IraeError
from irae_cli.fill import harmonic_fill
from irae_cli.tasks import get_task
from util import irae as run_irae

DATA = Path(__file__).parent / "data"


def irae(*args) -> subprocess.CompletedProcess:
    return run_irae(*args, timeout=300)


def test_the_mask_rides_beside_the_fill_and_is_dropped_from_the_result():
    task = get_task("inpaint")
    params = task.default_task_params(4)
    assert params["mask_channel"] is True and task.default_task_params(3).get("mask_channel") is None
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[0, :, 4:12, 8:20] = True
    mask[1, :, 20:30, 2:9] = True
    for channels in (3, 1):
        x = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(channels))
        inp = task.model_input(x, mask, params)
        assert inp.shape == (2, 4, 32, 32)
        assert torch.equal(inp[:, 3:], mask.float())
        assert torch.equal(inp[:, :3], harmonic_fill(x, mask).expand(-1, 3, -1, -1))
        assert torch.equal(task.model_output(inp, params), inp[:, :3])
    assert torch.equal(task.model_output(inp, {}), inp)  # a 3-channel model's output is all image
    with pytest.raises(IraeError, match="only inpainting"):
        get_task("denoise").default_task_params(4)


@pytest.mark.slow
def test_train_restore_and_round_trip_from_the_command_line(tmp_path):
    w = tmp_path / "m.safetensors"
    r = irae("train", "--task", "inpaint", DATA, "--arch", "small-inpaint-mask", "--steps", "3", "--patch", "32",
             "--batch-size", "2", "--lr", "1e-3", "--out", w, "-q")
    assert r.returncode == 0, r.stderr
    from irae_cli.weights import load_weights

    loaded = load_weights(w)
    assert loaded.model.config.channels == 4 and loaded.task_params["mask_channel"] is True

    src, masks = tmp_path / "in", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    hole = np.zeros((128, 128), np.uint8)
    hole[30:70, 40:90] = 255
    for name in ("astronaut_128.png", "camera_128_gray.png"):  # RGB and gray
        Image.open(DATA / name).save(src / name)
        Image.fromarray(hole).save(masks / name)
    r = irae("restore", "--task", "inpaint", src, tmp_path / "out", "--masks", masks, "--weights", w, "-q")
    assert r.returncode == 0, r.stderr
    known = hole < 128
    for name in ("astronaut_128.png", "camera_128_gray.png"):
        before, after = Image.open(src / name), Image.open(tmp_path / "out" / name)
        assert after.mode == before.mode and after.size == before.size
        b, a = np.asarray(before), np.asarray(after)
        assert np.array_equal(a[known], b[known])
        assert not np.array_equal(a[~known], b[~known])  # the holes were filled, not left grey

    report = tmp_path / "inv.json"
    r = irae("benchmark", "invertibility", "--weights", w, DATA, "--dtype", "fp64", "--device", "cpu",
             "--json", report)
    assert r.returncode == 0, r.stderr
    result = json.loads(report.read_text())
    assert result["summary"]["passed"] and all(row["shape"][0] == 4 for row in result["results"])


@pytest.mark.slow
def test_a_mask_model_is_refused_for_other_tasks_before_any_work(tmp_path):
    r = irae("train", "--task", "denoise", DATA, "--arch", "small-inpaint-mask", "--steps", "1",
             "--out", tmp_path / "d.safetensors", "-q")
    assert r.returncode == 2 and "inpaint only" in r.stderr
    assert not (tmp_path / "d.safetensors").exists()
