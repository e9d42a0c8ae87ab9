"""The shipped weights: registered with the right sha256, carded, and doing their job on the bundled examples."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irae_cli.weights import WEIGHTS_DIR, load_weights, read_index, sha256_file

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
INDEX = read_index()
CLEAN = {"astronaut.png": "astronaut_128.png", "coffee.png": "coffee_128.png", "chelsea.png": "chelsea_128.png",
         "camera_gray.png": "camera_128_gray.png"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_registered_file_matches_sha256_and_has_a_card(name):
    entry = INDEX[name]
    path = WEIGHTS_DIR / entry["file"]
    assert sha256_file(path) == entry["sha256"]
    card = WEIGHTS_DIR / entry["card"]
    assert entry["sha256"] in card.read_text()
    loaded = load_weights(name)
    assert loaded.task == entry["task"] and loaded.training.get("steps", 0) > 0


def test_one_default_per_task():
    defaults = [e["task"] for e in INDEX.values() if e.get("default")]
    assert len(defaults) == len(set(defaults))


@pytest.mark.skipif(not any(e["task"] == "denoise" and e.get("default") for e in INDEX.values()),
                    reason="no shipped denoising weights")
@pytest.mark.slow
def test_quick_start_denoises_the_examples(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "irae_cli", "restore", "--task", "denoise",
                           str(ROOT / "examples" / "noisy"), str(out), "-q"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    gains = []
    for noisy_name, clean_name in CLEAN.items():
        clean = np.asarray(Image.open(DATA / clean_name))
        noisy = np.asarray(Image.open(ROOT / "examples" / "noisy" / noisy_name))
        restored = np.asarray(Image.open(out / noisy_name))
        assert restored.shape == clean.shape
        gains.append(psnr(restored, clean) - psnr(noisy, clean))
    assert min(gains) > 3.0, gains  # sigma 25: every image clearly cleaner than its noisy input
