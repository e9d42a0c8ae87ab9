"""One low-precision rule: the model's ``ModelInfo.low_precision``, applied alike by restore, train and the
speed and invertibility benchmarks (``inference.LowPrecision``)."""

from __future__ import annotations

import pytest
import torch

from irae_cli import environment
from irae_cli.benchmark import invertibility
from irae_cli.benchmark.models import LoadedModel
from irae_cli.benchmark.speed import ModelTimer
from irae_cli.inference import LowPrecision, Restorer, casts_coupling_nets, low_precision
from irae_cli.model import PRESETS, create_model, model_info
from irae_cli.model.config import COUPLING_NETS, WHOLE, CNNConfig, IRAEConfig
from irae_cli.model.flows import CouplingNet, InvConv1x1
from irae_cli.tasks import get_task
from irae_cli.train.precision import compute_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_its_rule(name):
    expected = COUPLING_NETS if isinstance(PRESETS[name], IRAEConfig) else WHOLE
    assert isinstance(PRESETS[name], (IRAEConfig, CNNConfig))
    assert model_info(name).low_precision == expected
    assert casts_coupling_nets(name) == (expected == COUPLING_NETS)


def test_spectral_norm_irae_casts_its_coupling_nets_only():
    assert model_info(IRAEConfig(spectral_norm=True)).low_precision == COUPLING_NETS


@pytest.fixture(scope="module")
def spectral(photos):
    """An initialised spectral-norm IRAE: it has no folded form, so restore runs it factored."""
    model = create_model("tiny", spectral_norm=True).eval()
    model.initialize(photos[:2, :, :32, :32], photos[:2, :, :32, :32])
    return model


def _dtypes_seen(model, call) -> dict:
    """The output dtypes of the coupling nets' convolutions and of the 1x1 flow convolutions during ``call``."""
    seen: dict = {}
    nets = {id(c) for m in model.modules() if isinstance(m, CouplingNet) for c in m.modules()
            if isinstance(c, torch.nn.Conv2d)}
    hooks = [m.register_forward_hook(lambda mod, a, out, k=("net" if id(m) in nets else "flow"):
                                     seen.setdefault(k, set()).add(out.dtype))
             for m in model.modules() if id(m) in nets or isinstance(m, InvConv1x1)]
    try:
        call()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_restore_train_and_benchmarks_agree_for_a_spectral_norm_irae(spectral, photos, monkeypatch):
    x = photos[:1, :, :32, :32]
    want = {"net": {torch.bfloat16}, "flow": {torch.float32}}

    restorer = Restorer(spectral, get_task("denoise"), device="cpu", dtype="bf16", tile=0)
    assert restorer.runner is spectral and restorer.precision.scope == "coupling nets"
    assert _dtypes_seen(spectral, lambda: restorer(x)) == want

    train = LowPrecision(spectral, CPU, torch.bfloat16).attach()  # what Trainer and train_speed attach
    assert train.scope == restorer.precision.scope
    with torch.no_grad(), train.autocast():
        assert _dtypes_seen(spectral, lambda: spectral(x)) == want
    train.detach()

    lm = LoadedModel(name="tiny-sn", model=spectral, weights=None, sha256=None, arch="tiny")
    timer = ModelTimer(lm, "denoise", CPU, "bf16", compile=False, folded=True, channels_last=False, notes=[])
    assert timer.resolved == "bfloat16 (coupling nets)"

    def round_trip():
        invertibility.round_trip(spectral, x[0], "bf16", CPU)
    assert _dtypes_seen(spectral, round_trip) == {"net": {torch.bfloat16}, "flow": {torch.float32}}
    assert all(m.autocast_dtype is None for m in spectral.modules() if isinstance(m, CouplingNet))

    # --dtype auto on a CPU with native bf16: the same answer for restore and train.
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: True)
    assert low_precision(spectral, CPU, "auto").dtype == torch.bfloat16 == compute_dtype("auto", CPU, "tiny")
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: False)
    assert low_precision(spectral, CPU, "auto").dtype == torch.float32 == compute_dtype("auto", CPU, "tiny")


def test_a_cnn_runs_whole_under_autocast(photos, monkeypatch):
    cnn = create_model("cnn-tiny").eval()
    r = Restorer(cnn, get_task("denoise"), device="cpu", dtype="bf16", tile=0)
    assert r.precision.scope == "whole model"
    with r.autocast():
        assert cnn.body(photos[:1, :, :16, :16]).dtype == torch.bfloat16
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: True)
    # whole networks lose too much in bf16 on the CPU's auto path: fp32 for restore and train alike
    assert low_precision(cnn, CPU, "auto").dtype == torch.float32 == compute_dtype("auto", CPU, "cnn-tiny")


def test_a_model_timed_at_several_dtypes_keeps_none_of_the_earlier(spectral):
    LowPrecision(spectral, CPU, torch.bfloat16).attach()
    LowPrecision(spectral, CPU, torch.float32).attach()
    assert all(m.autocast_dtype is None for m in spectral.modules() if isinstance(m, CouplingNet))
