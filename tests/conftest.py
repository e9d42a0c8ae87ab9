from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
RGB_NAMES = ["astronaut_128.png", "coffee_128.png", "chelsea_128.png"]


def load_rgb(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(DATA / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    """The three 128x128 RGB test photos as a (3, 3, 128, 128) float batch in [0, 1]."""
    return torch.stack([load_rgb(n) for n in RGB_NAMES])
