"""The coupling net's shape (``IRAEConfig.mid_kernel``) and the presets at medium's cost: a 3x3 middle
convolution keeps every invariant a 1x1 one has (bijection, folded runner, weights files, conditioning,
spectral norm, ONNX, the compiled training step), and the shape presets cost what medium costs."""

import json
import re
from pathlib import Path

import pytest
import torch

import irae_cli.train as tr
from irae_cli.benchmark.speed import macs_per_pixel
from irae_cli.model import PRESETS, IRAEConfig, config_from_dict, config_to_json, create_model, widen_for_condition
from irae_cli.model.flows import CouplingNet
from irae_cli.model.folded import fold
from irae_cli.train.trainer import Trainer
from irae_cli.weights import load_weights, read_model_config, save_weights
from util import whole_step_graph_breaks

ROOT = Path(__file__).resolve().parent.parent
LEVELS = torch.tensor([5.0, 50.0, 25.0])
RF = {"mid_kernel": 3}


def _trained_like(photos: torch.Tensor, name: str = "tiny", scale: float = 0.02, **overrides) -> torch.nn.Module:
    """An initialised model with random weights everywhere: a model at rest maps almost nothing."""
    model = create_model(name, **overrides).eval()
    level = LEVELS if overrides.get("condition") == "sigma" else None
    model.initialize(photos, photos, level=level)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ the config


@pytest.mark.parametrize("bad", [0, 2, 5, True, 3.0, "3"])
def test_mid_kernel_is_1_or_3(bad):
    with pytest.raises(ValueError, match="mid_kernel"):
        IRAEConfig(mid_kernel=bad)


def test_the_default_shape_leaves_the_description_unchanged_and_old_descriptions_read_as_1x1():
    assert "mid_kernel" not in config_to_json(create_model("tiny").config)
    assert json.loads(config_to_json(create_model("tiny", **RF).config))["mid_kernel"] == 3
    old = json.loads(config_to_json(create_model("tiny").config))
    assert config_from_dict(old).mid_kernel == 1
    assert "mid_kernel" not in read_model_config("irae-denoise-small")  # a file from before the field
    assert load_weights("irae-denoise-small").model.config.mid_kernel == 1


def test_the_middle_convolution_has_the_kernel_and_the_receptive_field_grows_to_7x7():
    for k, side in ((1, 5), (3, 7)):
        net = CouplingNet(4, 8, 6, spectral=False, mid_kernel=k).double()
        assert net.conv2.weight.shape == (6, 6, k, k)
        with torch.no_grad():
            net.conv3.weight.normal_(generator=torch.Generator().manual_seed(0))  # zero-initialised: open it
        x = torch.randn(1, 4, 15, 15, dtype=torch.float64, requires_grad=True)
        net(x)[0, :, 7, 7].sum().backward()
        reach = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
        assert (reach.max(0).values - reach.min(0).values + 1).tolist() == [side, side]


# ------------------------------------------------------------------ the model


@pytest.mark.parametrize("overrides", [RF, {**RF, "clamp": 0.0}, {**RF, "spectral_norm": True}],
                         ids=["affine", "additive", "spectral-norm"])
def test_a_3x3_middle_is_still_a_bijection(photos, overrides):
    x = photos[:, :, :64, :64]
    model = _trained_like(x, **overrides).double()
    x = x.double()
    with torch.no_grad():
        y = model(x)
        assert _rel(y, x) > 1e-3  # far from the identity, so the round trip means something
        assert _rel(model.inverse(y), x) < 1e-9 and _rel(model(model.inverse(x)), x) < 1e-9


def test_the_folded_runner_restores_what_the_model_does(photos):
    model = _trained_like(photos, scale=0.005, **RF)
    y = photos[:, :, :67, :93]  # not a multiple of the size multiple: padding and cropping agree too
    with torch.inference_mode():
        a, b = model(y), fold(model)(y)
    assert a.shape == b.shape and (a - b).abs().max() < 1e-5 * a.abs().max()
    assert (a - y).abs().max() > 1e-2


def test_weights_of_a_3x3_middle_save_and_load(tmp_path, photos):
    model = _trained_like(photos, **RF)
    save_weights(model, tmp_path / "rf.safetensors", task="denoise")
    loaded = load_weights(tmp_path / "rf.safetensors").model.eval()
    assert loaded.config == model.config and loaded.config.mid_kernel == 3
    with torch.no_grad():
        assert torch.equal(loaded(photos), model(photos))
    # A 1x1 model's weights cannot load into a 3x3 model's shape, nor the other way round.
    with pytest.raises(RuntimeError):
        create_model("tiny").load_state_dict(model.state_dict())


def test_a_conditioned_3x3_middle_widens_folds_and_inverts(photos):
    blind = _trained_like(photos, **RF)
    widened = widen_for_condition(blind).eval()
    assert widened.config.mid_kernel == 3 and widened.config.condition == "sigma"
    with torch.no_grad():
        assert torch.equal(widened(photos, LEVELS), blind(photos))
    model = _trained_like(photos, condition="sigma", **RF)
    with torch.no_grad():
        m64, x64 = model.double(), photos.double()
        assert _rel(m64.inverse(m64(x64, LEVELS), LEVELS), x64) < 1e-9
        model.float()
        assert (fold(model)(photos, LEVELS) - model(photos, LEVELS)).abs().max() < 1e-5


def test_spectral_norm_widens_a_3x3_middle(photos):
    blind = _trained_like(photos, spectral_norm=True, **RF)
    widened = widen_for_condition(blind).eval()
    with torch.no_grad():  # the normalising sigma is a sum over the weight, with the zeros in it: rounding only
        assert (widened(photos, LEVELS) - blind(photos)).abs().max() < 1e-5


def test_the_onnx_export_of_a_3x3_middle_restores_like_torch(photos):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from irae_cli.onnx_export import export_onnx

    model = _trained_like(photos, scale=0.005, **RF)
    data = export_onnx(model, "denoise", {})
    x = photos[:2, :, :36, :44]  # a size the export never saw
    y = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["restored"], {"image": x.numpy()})[0]
    with torch.inference_mode():
        assert abs(y - fold(model)(x).numpy()).max() < 1e-5


# ------------------------------------------------------------------ the training step


@pytest.fixture()
def tiny_rf(monkeypatch) -> str:
    """A tiny 3x3-middle preset that training accepts for this test only."""
    monkeypatch.setitem(PRESETS, "tiny-rf", IRAEConfig(width=16, depth=2, levels=2, mid_kernel=3))
    return "tiny-rf"


@pytest.mark.slow
@pytest.mark.parametrize("condition", ["none", "sigma"])
def test_the_whole_step_of_a_3x3_middle_is_one_graph(tmp_path, photo_folder, tiny_rf, condition):
    s = tr.Session(data=photo_folder, out=tmp_path / "w.safetensors", quiet=True, compile="off", dtype="fp32")
    t = Trainer(s, {"arch": tiny_rf, "patch": 16, "batch_size": 4, "steps": 50, "inverse_gain": 50.0,
                    "condition": condition})
    assert t._step() and t.model.config.mid_kernel == 3
    assert whole_step_graph_breaks(t) == 0


# ------------------------------------------------------------------ the presets at medium's cost


def _macs(name: str) -> float:
    """As ``irae benchmark speed`` counts them: of an initialised model (its 1x1 weights cached)."""
    model = create_model(name)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.initialize(x, x)
    return macs_per_pixel(model.eval(), 3, model.size_multiple)


@pytest.mark.slow
def test_the_shape_presets_cost_what_medium_costs_and_the_docs_say_so():
    medium = _macs("medium")
    doc = (ROOT / "docs" / "model.md").read_text()
    rows = dict(re.findall(r"^\| `(medium(?:-rf|-l3)?)` \|[^|\n]*\|[^|\n]*\| ([\d,]+) \|", doc, flags=re.M))
    assert set(rows) == {"medium", "medium-rf", "medium-l3"}
    for name in rows:
        macs = _macs(name)
        assert abs(macs / medium - 1) <= 0.03, name
        assert int(rows[name].replace(",", "")) == round(macs), name
    assert PRESETS["medium-rf"].mid_kernel == 3 and PRESETS["medium-l3"].levels == 3
    assert PRESETS["medium-l3"].depth >= 4
