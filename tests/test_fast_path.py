"""The CPU fast path: the folded restore form, coupling-only bf16, and when --compile auto compiles."""

import pytest
import torch

from irae_cli import environment, inference
from irae_cli.inference import Restorer, pick_dtype
from irae_cli.model import create_model
from irae_cli.model.folded import FoldedIRAE, fold
from irae_cli.tasks import get_task

from conftest import load_rgb


def trained_like(arch: str, photos: torch.Tensor, scale: float = 0.005, **overrides) -> torch.nn.Module:
    """An initialised model with every parameter moved off its start, as training would."""
    model = create_model(arch, **overrides).eval()
    model.initialize(photos[:2, :, :64, :64], photos[:2, :, :64, :64])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def noisy(photos: torch.Tensor, sigma: float = 25, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((photos + torch.randn(photos.shape, generator=g) * sigma / 255).clamp(0, 1) * 255).round() / 255


@pytest.mark.parametrize("arch,overrides", [("tiny", {}), ("small-inpaint", {}), ("tiny", {"clamp": 0.0}),
                                            ("tiny", {"channels": 1})])
def test_folded_model_restores_what_the_model_does(photos, arch, overrides):
    channels = overrides.get("channels", 3)
    x = photos[:, :channels, :, :]
    model = trained_like(arch, x, **overrides)
    folded = fold(model)
    assert isinstance(folded, FoldedIRAE)
    y = noisy(x[:, :, :67, :93])  # not a multiple of the size multiple: padding and cropping agree too
    with torch.inference_mode():
        a, b = model(y), folded(y)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-5 * a.abs().max().item()  # fp32 rounding, reordered
    assert (a - y).abs().max().item() > 1e-2  # the map is far from the identity, so the match means something


def test_fold_refuses_a_fresh_model_and_passes_other_models_through():
    with pytest.raises(ValueError, match="initialised"):
        fold(create_model("tiny"))
    cnn = create_model("cnn-tiny")
    assert fold(cnn) is cnn


def test_coupling_only_bf16_stays_close_to_fp32(photos):
    model = trained_like("tiny", photos)
    y = noisy(photos)
    fp32, bf16 = fold(model), fold(model).set_coupling_dtype(torch.bfloat16)
    with torch.inference_mode():
        a, b = fp32(y), bf16(y)
    assert b.dtype == torch.float32
    assert 0 < (a - b).abs().max().item() < 2e-2  # bf16 really ran, and only where it is harmless


def test_auto_dtype_on_the_cpu_is_bf16_only_for_coupling_nets_on_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: True)
    assert pick_dtype("auto", cpu, coupling_only=True) == torch.bfloat16
    assert pick_dtype("auto", cpu) == torch.float32  # whole networks: fp32
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: False)
    assert pick_dtype("auto", cpu, coupling_only=True) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16  # asked for: given


def test_restorer_runs_the_folded_model_with_coupling_bf16(photos):
    model = trained_like("tiny", photos)
    r = Restorer(model, get_task("denoise"), device="cpu", dtype="bf16", tile=0)
    assert isinstance(r.runner, FoldedIRAE) and r.precision.scope == "coupling nets"
    exact = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, folded=False)
    y = noisy(photos)
    assert (r(y) - exact(y)).abs().max().item() < 2e-2


def test_compile_auto_decides_from_the_first_call(photos, monkeypatch):
    model = trained_like("tiny", photos)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    y = noisy(photos[:1])
    short = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, compile="auto",
                     workload_megapixels=0.05)
    short(y)
    short(y)
    assert not compiled and short.compile == "off"  # too little work left to repay a compile
    monkeypatch.setattr(inference, "COMPILE_PAYOFF_S", 0.0)
    long = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, compile="auto",
                    workload_megapixels=1e6)
    first = long(y)
    assert long.compiled and compiled == [long.eager]
    assert torch.equal(long(y), first)
    unknown = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, compile="auto")
    unknown(y)
    assert not unknown.compiled  # no workload given: never compile on a guess


def test_compile_failure_at_run_time_falls_back_to_eager(photos, monkeypatch):
    model = trained_like("tiny", photos)

    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(torch, "compile", lambda m, **kw: broken)
    r = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, compile="on")
    y = noisy(photos[:1])
    out = r(y)
    assert not r.compiled and r.compile == "off" and any("compile failed" in n for n in r.stats.notes)
    assert torch.equal(out, Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0)(y))


def test_inpaint_input_is_the_harmonic_fill_and_old_weights_keep_grey():
    from irae_cli.fill import harmonic_fill

    task = get_task("inpaint")
    x = load_rgb("astronaut_128.png")[None]
    mask = torch.zeros(1, 1, 128, 128, dtype=torch.bool)
    mask[..., 40:80, 30:90] = True
    params = task.params_for_weights({"fill": 0.5, "prefill": "harmonic"})
    filled = task.model_input(x, mask, params)
    assert torch.equal(filled, harmonic_fill(x, mask))
    assert torch.equal(filled[~mask.expand_as(x)], x[~mask.expand_as(x)])  # known pixels untouched
    legacy = task.params_for_weights({"fill": 0.5})  # written before the pre-fill existed
    assert legacy["prefill"] == "none"
    assert torch.all(task.model_input(x, mask, legacy)[mask.expand_as(x)] == 0.5)
    assert task.default_task_params()["prefill"] == "harmonic"
