"""The shared inference path: tiling on the model's grid, blending, channel adaptation."""

import pytest
import torch

from irae_cli.errors import IraeError
from irae_cli.inference import Restorer, blend_ramp, tile_starts
from irae_cli.model import create_model
from irae_cli.tasks import get_task


@pytest.fixture(scope="module")
def model(photos):
    torch.manual_seed(0)
    m = create_model("tiny").eval()
    m.initialize(photos + 0.1 * torch.randn_like(photos), photos)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # make the couplings do real, spatially varying work
        for name, p in m.named_parameters():
            if "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m


def test_tiles_stay_on_the_model_grid_and_blend(model, photos):
    y = photos[:1, :, 1:127, 2:125]  # 126 x 123: not a multiple of the model's size multiple

    def run(**kw):
        return Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", **kw)(y)

    whole = run(tile=0)
    tiled = {ov: run(tile=64, tile_overlap=ov) for ov in (0, 16, 17)}
    assert all(t.shape == y.shape for t in tiled.values())
    # 17 is rounded up to the grid (the model's size multiple is 4), as is every tile start.
    assert torch.equal(tiled[17], run(tile=64, tile_overlap=20))
    err = {ov: (t - whole).abs().mean().item() for ov, t in tiled.items()}
    change = (whole - y).abs().mean().item()
    # Blending the overlaps brings tiles closer to the whole-image result, and what is
    # left is small beside what the model changes (this random model sees far).
    assert err[16] < 0.7 * err[0]
    assert err[16] < 0.1 * change


def test_tile_starts_cover_and_end_at_the_edge():
    assert tile_starts(100, 100, 8) == [0]
    starts = tile_starts(200, 64, 16)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


def test_blend_ramp_positive_and_flat_inside():
    w = blend_ramp(64, 16, True, True)
    assert (w > 0).all() and w[16:48].eq(1).all() and w[0] < w[15]


def test_gray_image_through_rgb_model(model, photos):
    gray = photos[:1].mean(dim=1, keepdim=True)
    out = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0)(gray)
    assert out.shape == gray.shape and out.min() >= 0 and out.max() <= 1


def test_bad_tile_options(model):
    with pytest.raises(IraeError, match="too small"):
        Restorer(model, get_task("denoise"), device="cpu", tile=8)
    with pytest.raises(IraeError, match="less than half"):
        Restorer(model, get_task("denoise"), device="cpu", tile=64, tile_overlap=40)
    with pytest.raises(IraeError, match="CUDA is not available|does not exist"):
        if torch.cuda.is_available():
            raise IraeError("CUDA is not available")  # nothing to check on a GPU machine
        Restorer(model, get_task("denoise"), device="cuda")
