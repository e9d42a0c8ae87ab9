"""Every preset saves, loads and (for an IRAE) inverts; each flow module inverts on its own."""

import pytest
import torch

from irae_cli.model import PRESETS, create_model, model_info
from irae_cli.model.flows import ActNorm, AffineCoupling, InvConv1x1
from irae_cli.weights import load_weights, save_weights
from util import randomised


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_saves_loads_and_round_trips(preset, tmp_path):
    model = create_model(preset).eval()
    c = model.config.channels
    x = torch.rand(2, c, 16, 16, generator=torch.Generator().manual_seed(1))
    if hasattr(model, "initialize"):
        model.initialize(x, x)
    randomised(model, scale=0.01)  # small: a deep untrained flow amplifies fp32 rounding
    path = tmp_path / "w.safetensors"
    save_weights(model, path, task="inpaint" if c == 4 else "denoise")
    loaded = load_weights(path).model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        if model_info(preset).invertible:  # float64: the mathematics, free of fp32 rounding in a random deep flow
            m64, x64 = model.double(), x.double()
            assert _rel(m64.inverse(m64(x64)), x64) < 1e-9


def test_actnorm_inverts():
    m = randomised(ActNorm(6)).double()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(m(x), x) > 1e-3
        assert _rel(m.inverse(m(x)), x) < 1e-12 and _rel(m(m.inverse(x)), x) < 1e-12


def test_invertible_1x1_convolution_inverts():
    m = randomised(InvConv1x1(8)).double()
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(m(x), x) > 1e-3  # a real rotation, not the identity
        assert _rel(m.inverse(m(x)), x) < 1e-12 and _rel(m(m.inverse(x)), x) < 1e-12


@pytest.mark.parametrize("clamp", [0.0, 0.5])
def test_affine_coupling_inverts(clamp):
    m = randomised(AffineCoupling(8, 16, clamp, spectral=False)).double()
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(m(x), x) > 1e-3
        assert _rel(m.inverse(m(x)), x) < 1e-12 and _rel(m(m.inverse(x)), x) < 1e-12
