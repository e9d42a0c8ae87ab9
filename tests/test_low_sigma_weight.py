"""--low-sigma-weight: the weighted loss and its refusal outside denoise."""

import subprocess
import sys

import torch

from irae_cli.train.loss import low_sigma_weight, training_loss


def test_weighted_loss_is_a_weighted_mean_over_patches():
    clean = torch.zeros(2, 3, 4, 4)
    restored = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.5)])
    sigma = torch.tensor([2.0, 50.0])
    w = low_sigma_weight(sigma, 5.0)
    assert torch.allclose(w, torch.tensor([1 / 5, 1 / 50]))
    got = training_loss(restored, clean, None, "l1", w)
    assert abs(float(got) - (0.1 * 0.2 + 0.5 * 0.02) / 0.22) < 1e-6
    # equal weights give the plain mean: the loss keeps its scale
    same = training_loss(restored, clean, None, "l1", torch.ones(2))
    assert torch.isclose(same, training_loss(restored, clean, None, "l1"))


def test_low_sigma_weight_is_refused_for_other_tasks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "irae_cli", "train", "--task", "jpeg", "tests/data", "--arch", "tiny",
                        "--steps", "2", "--low-sigma-weight", "5", "--out", str(tmp_path / "w.safetensors")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--low-sigma-weight" in r.stderr and r.stderr.count("\n") == 1
