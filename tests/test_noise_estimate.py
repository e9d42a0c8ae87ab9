"""The noise estimator (degradations/estimate.py): right on pure noise, low on clean photos, robust to clipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from irae_cli.degradations.estimate import estimate_sigma
from irae_cli.imageio import read_image
from irae_cli.pixels import quantize_u8

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("sigma", [2.0, 5.0, 15.0, 25.0])
def test_pure_noise_gives_back_its_sigma(sigma):
    g = torch.Generator().manual_seed(0)
    x = 0.5 + torch.randn(3, 256, 256, generator=g) * sigma / 255
    assert estimate_sigma(x) == pytest.approx(sigma, rel=0.05)


def test_planar_ramps_are_not_noise():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 200), torch.linspace(0, 1, 300), indexing="ij")
    x = (0.1 + 0.4 * yy + 0.3 * xx).expand(3, -1, -1)
    assert estimate_sigma(x) < 0.05


@pytest.mark.parametrize("name", ["astronaut_128.png", "chelsea_128.png", "coffee_128.png", "camera_128_gray.png"])
def test_photos_clean_low_and_noisy_near_sigma(name):
    x, _ = read_image(DATA / name)
    assert estimate_sigma(x) < 4.0  # the route threshold: clean photos are copied
    g = torch.Generator().manual_seed(1)
    for sigma in (10.0, 25.0):
        noisy = quantize_u8(x + torch.randn(x.shape, generator=g) * sigma / 255)  # an 8-bit, clipped file
        assert estimate_sigma(noisy) == pytest.approx(sigma, rel=0.2)


def test_batch_gives_one_estimate_per_image_and_tiny_images_zero():
    g = torch.Generator().manual_seed(2)
    x = 0.5 + torch.randn(2, 3, 64, 64, generator=g) * torch.tensor([5.0, 20.0]).view(2, 1, 1, 1) / 255
    est = estimate_sigma(x)
    assert est.shape == (2,) and est[0] == pytest.approx(5, rel=0.1) and est[1] == pytest.approx(20, rel=0.1)
    assert estimate_sigma(torch.rand(3, 2, 2)) == 0.0


def test_fully_clipped_image_does_not_fail():
    assert estimate_sigma(torch.ones(3, 64, 64)) == 0.0


def _work(x: torch.Tensor) -> tuple[int, float, set]:
    """(torch operations, values they write per pixel, their names) of one estimate: its cost without a clock."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls, self.values, self.names = 0, 0, set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.calls += 1
            self.names.add(func.overloadpacket.__name__)
            self.values += sum(t.numel() for t in (out if isinstance(out, (tuple, list)) else [out])
                               if isinstance(t, torch.Tensor))
            return out

    with Count() as count:
        estimate_sigma(x)
    return count.calls, count.values / (x.shape[-2] * x.shape[-1]), count.names


def test_cheap_whatever_the_machine():
    """About 50 ms per megapixel on a CPU (docs/auto.md), as whole-image operations: the number of torch calls
    does not grow with the image (no loop over pixels or blocks in Python), the values written stay a few dozen per
    pixel, and there is no convolution (a 3x3 conv2d was ~10x slower than the separable differences)."""
    small, large = torch.rand(3, 200, 200) * 0.9 + 0.05, torch.rand(3, 1000, 1000) * 0.9 + 0.05
    calls_small, _, _ = _work(small)
    calls_large, per_pixel, names = _work(large)
    assert calls_large == calls_small < 200
    assert per_pixel < 80  # 61 measured, views included
    assert not any("conv" in name for name in names), names
