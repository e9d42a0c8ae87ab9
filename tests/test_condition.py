"""A denoiser conditioned on the noise level (``--condition sigma``): the model stays a bijection at each
level, blind weights widen into a conditioned model that computes the same function, and training,
validation, checkpoints and resume carry the condition."""

import json
from pathlib import Path

import pytest
import torch

import irae_cli.train as tr
from irae_cli.errors import IraeError
from irae_cli.model import config_to_json, create_model, widen_for_condition
from irae_cli.model.folded import fold
from irae_cli.train.trainer import Trainer
from irae_cli.weights import load_weights, save_weights

from util import irae, randomised, whole_step_graph_breaks

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
MEDIUM = ROOT / "training" / "denoise" / "medium-cpu11.safetensors"
LEVELS = torch.tensor([5.0, 50.0, 25.0])


def _trained_like(name: str, photos: torch.Tensor, **overrides) -> torch.nn.Module:
    """An initialised model with random weights everywhere (the level's included)."""
    model = create_model(name, **overrides).eval()
    level = LEVELS if overrides.get("condition") == "sigma" else None
    model.initialize(photos, photos, level=level)
    return randomised(model, scale=0.02)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ the model


def test_a_blind_description_is_unchanged_and_old_weights_load():
    assert "condition" not in config_to_json(create_model("tiny").config)
    assert json.loads(config_to_json(create_model("tiny", condition="sigma").config))["condition"] == "sigma"
    if MEDIUM.is_file():
        assert load_weights(MEDIUM).model.config.condition == "none"


def test_the_conditioned_model_is_a_bijection_at_each_level_and_uses_it(photos):
    model = _trained_like("tiny", photos, condition="sigma").double()
    y = photos.double()
    with torch.no_grad():
        restored = model(y, LEVELS.double())
        assert _rel(model.inverse(restored, LEVELS.double()), y) < 1e-10
        assert _rel(model(y, torch.full((3,), 40.0, dtype=torch.float64)), restored) > 1e-4  # the level matters
        assert torch.allclose(model(y[:1], 5.0), model(y[:1], torch.tensor([5.0], dtype=torch.float64)))


def test_a_level_is_required_of_a_conditioned_model_and_refused_by_a_blind_one(photos):
    model = create_model("tiny", condition="sigma")
    with pytest.raises(ValueError, match="the noise sigma of each image"):
        model(photos)
    with pytest.raises(ValueError, match="one sigma per image"):
        model(photos, torch.tensor([5.0, 6.0]))
    with pytest.raises(ValueError, match="blind"):
        create_model("tiny")(photos, LEVELS)
    with pytest.raises(ValueError, match="unknown condition"):
        create_model("tiny", condition="noise-map")


def test_the_extra_input_starts_at_zero():
    model = create_model("tiny", condition="sigma")
    for name, p in model.named_parameters():
        if name.endswith("net.conv1.weight"):
            assert p.shape[1] in (7, 13) and torch.count_nonzero(p[:, -1]) == 0 and torch.count_nonzero(p[:, :-1])


@pytest.mark.parametrize("spectral", [False, True], ids=["plain", "spectral-norm"])
def test_widened_blind_weights_compute_the_same_function(photos, spectral):
    blind = _trained_like("tiny", photos, spectral_norm=spectral)
    widened = widen_for_condition(blind).eval()
    assert widened.config.condition == "sigma" and blind.config.condition == "none"
    state = widen_for_condition(blind.state_dict())  # the state-dict form gives the same weights
    assert all(torch.equal(state[k], v) for k, v in widened.state_dict().items())
    with torch.no_grad():
        restored = blind(photos)
        if spectral:  # the normalising sigma is a sum over the weight, with the zeros in it: rounding only
            assert (widened(photos, LEVELS) - restored).abs().max() < 1e-5
            return
        assert torch.equal(widened(photos, LEVELS), restored)
        assert torch.equal(widened.inverse(restored, LEVELS), blind.inverse(restored))
        assert torch.equal(fold(widened)(photos, LEVELS), fold(blind)(photos))


@pytest.mark.skipif(not MEDIUM.is_file(), reason="the trained medium weights are not in this checkout")
def test_the_real_medium_weights_widen_without_changing_a_pixel(photos):
    blind = load_weights(MEDIUM).model.eval()
    widened = widen_for_condition(blind).eval()
    with torch.no_grad():
        noisy = (photos + 25 / 255 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        assert torch.equal(widened(noisy, LEVELS), blind(noisy))
        assert torch.equal(fold(widened)(noisy, LEVELS), fold(blind)(noisy))


def test_the_folded_runner_restores_what_the_conditioned_model_does(photos):
    model = _trained_like("tiny", photos, condition="sigma")
    folded = fold(model)
    with torch.no_grad():
        expected = model(photos, LEVELS)
        assert (folded(photos, LEVELS) - expected).abs().max() < 1e-5
        with pytest.raises(ValueError, match="conditioned"):
            folded(photos)
        folded.set_coupling_dtype(torch.bfloat16)  # the coupling nets, the level map's weights with them
        assert (folded(photos, LEVELS) - expected).abs().max() < 0.05


# ------------------------------------------------------------------ the training step

FAST = {"arch": "tiny", "patch": 16, "batch_size": 4, "condition": "sigma"}


def _trainer(tmp_path, photo_folder, given, dtype="fp32") -> Trainer:
    s = tr.Session(data=photo_folder, out=tmp_path / "w.safetensors", quiet=True, compile="off", dtype=dtype)
    t = Trainer(s, {**FAST, "steps": 50, **given})
    assert t._step()
    return t


def test_training_tells_the_model_the_true_sigma(tmp_path, photo_folder, monkeypatch):
    t = _trainer(tmp_path, photo_folder, {"inverse_gain": 50.0, "inverse_gain_every": 1})
    seen = []
    real = type(t.model).forward

    def spy(model, y, level=None):
        seen.append(level)
        return real(model, y, level)

    monkeypatch.setattr(type(t.model), "forward", spy)
    assert t._step()
    assert len(seen) == 1 and torch.equal(seen[0], t.degrader.last_sigma)


@pytest.mark.parametrize("given,dtype", [({"inverse_gain": 50.0}, "fp32"),
                                         ({"inverse_gain": 50.0, "inverse_probe": 1e-5}, "bf16")],
                         ids=["probe", "fine-probe-bf16"])
def test_the_conditioned_whole_step_is_one_graph(tmp_path, photo_folder, given, dtype):
    assert whole_step_graph_breaks(_trainer(tmp_path, photo_folder, given, dtype)) == 0


def test_training_refuses_a_condition_it_cannot_give(tmp_path, photo_folder):
    for given, match in (({"task": "jpeg"}, "for --task denoise"), ({"arch": "cnn-tiny"}, "IRAE preset"),
                         ({"condition": "quality"}, "for --task jpeg"),
                         ({"condition": "noise-map"}, "--condition must be one of")):
        with pytest.raises(IraeError, match=match):
            Trainer(tr.Session(data=photo_folder, out=tmp_path / "x.safetensors", quiet=True), {**FAST, "steps": 2,
                                                                                            **given})


# ------------------------------------------------------------------ the command


def _train(tmp_path, *args):
    return irae("train", DATA, "--arch", "tiny", "--batch-size", "2", "--patch", "32", "--compile", "off",
                "-q", *args)


@pytest.mark.slow
def test_train_validate_save_load_and_resume_a_conditioned_model(tmp_path, photos):
    out = tmp_path / "c.safetensors"
    r = _train(tmp_path, "--steps", "4", "--stop-at", "2", "--condition", "sigma", "--val", DATA,
               "--val-crop", "64", "--out", out)
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "c.ckpt.safetensors"
    r = irae("train", "--resume", ckpt, "--out", out, "--compile", "off", "-q")
    assert r.returncode == 0, r.stderr
    log = json.loads((tmp_path / "c.log.json").read_text())
    final = log["val"][-1]["levels"]["sigma25"]
    assert {"psnr_rgb_u8", "psnr_rgb_u8_known_sigma", "sigma_estimate"} <= set(final)
    assert abs(final["sigma_estimate"] - 25) < 5
    loaded = load_weights(out).model
    assert loaded.config.condition == "sigma" and log["summary"]["steps"] == 4
    with torch.no_grad():
        assert torch.isfinite(loaded(photos, LEVELS)).all()
    r = irae("train", "--resume", ckpt, "--out", out, "--steps", "6", "--condition", "none", "-q")
    assert r.returncode == 2 and "condition 'none' (checkpoint: 'sigma')" in r.stderr


@pytest.mark.slow
def test_init_from_blind_weights_widens_them(tmp_path):
    blind, cond = tmp_path / "blind.safetensors", tmp_path / "cond.safetensors"
    assert _train(tmp_path, "--steps", "2", "--out", blind).returncode == 0
    r = _train(tmp_path, "--steps", "2", "--condition", "sigma", "--init-from", blind, "--out", cond)
    assert r.returncode == 0, r.stderr
    log = json.loads((tmp_path / "cond.log.json").read_text())
    assert log["summary"]["init_from"]["widened_to"] == "sigma"
    r = _train(tmp_path, "--steps", "2", "--init-from", cond, "--out", tmp_path / "again.safetensors")
    assert r.returncode == 2 and "add --condition sigma" in r.stderr


def test_weights_of_a_conditioned_model_save_and_load(tmp_path, photos):
    model = _trained_like("tiny", photos, condition="sigma")
    save_weights(model, tmp_path / "w.safetensors", task="denoise")
    loaded = load_weights(tmp_path / "w.safetensors").model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(photos, LEVELS), model(photos, LEVELS))


# ------------------------------------------------------------------ restore, benchmark, export


@pytest.fixture(scope="module")
def cond_weights(tmp_path_factory) -> Path:
    """Weights of a conditioned tiny denoiser whose level weights are not zero (it uses the level)."""
    from conftest import load_rgb

    photos = torch.stack([load_rgb(n) for n in ("astronaut_128.png", "coffee_128.png", "chelsea_128.png")])
    path = tmp_path_factory.mktemp("weights") / "cond.safetensors"
    save_weights(_trained_like("tiny", photos, condition="sigma"), path, task="denoise")
    return path


@pytest.fixture(scope="module")
def blind_weights(tmp_path_factory) -> Path:
    from conftest import load_rgb

    photos = torch.stack([load_rgb(n) for n in ("astronaut_128.png", "coffee_128.png")])
    path = tmp_path_factory.mktemp("weights") / "blind.safetensors"
    save_weights(_trained_like("tiny", photos), path, task="denoise")
    return path


def _report(path: Path) -> dict:
    return {Path(d["input"]).name: d for d in map(json.loads, path.read_text().splitlines())}


def test_restore_tells_the_model_each_image_s_estimated_sigma_or_the_given_one(tmp_path, cond_weights):
    from irae_cli.degradations.estimate import estimate_sigma
    from irae_cli.imageio import read_image

    runs = {}
    for name, extra in (("est", ()), ("given", ("--sigma", "30"))):
        r = irae("restore", "--task", "denoise", DATA, tmp_path / name, "--weights", cond_weights, "--backend",
                 "torch", "--report", tmp_path / f"{name}.jsonl", *extra)
        assert r.returncode == 0, r.stderr
        runs[name] = _report(tmp_path / f"{name}.jsonl")
    for image, line in runs["est"].items():
        x, _ = read_image(DATA / image)
        assert line["model_sigma_source"] == "estimated"
        assert line["model_sigma"] == pytest.approx(estimate_sigma(x), abs=1e-3)
        assert runs["given"][image]["model_sigma"] == 30 and runs["given"][image]["model_sigma_source"] == "given"
    a, _ = read_image(tmp_path / "est" / "astronaut_128.png")
    b, _ = read_image(tmp_path / "given" / "astronaut_128.png")
    assert not torch.equal(a, b)


def test_restore_sigma_usage_errors_exit_2_before_any_work(tmp_path, cond_weights, blind_weights):
    for weights, args, match in ((blind_weights, ("--sigma", "25"), "not conditioned on the noise level"),
                                 (cond_weights, ("--sigma", "300"), "out of range"),
                                 (cond_weights, ("--sigma", "-1"), "out of range"),
                                 (cond_weights, ("--task", "jpeg", "--sigma", "5"), "--task denoise")):
        args = args if "--task" in args else ("--task", "denoise", *args)
        r = irae("restore", DATA, tmp_path / "out", "--weights", weights, *args)
        assert r.returncode == 2 and match in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()


def test_benchmark_uses_the_estimated_sigma_unless_told_the_known_one(tmp_path, cond_weights, blind_weights):
    results = {}
    for name, extra in (("est", ()), ("known", ("--known-sigma",))):
        r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "5,50", DATA, "--weights", cond_weights,
                 "--classical", "none", "--backend", "torch", "--json", tmp_path / f"{name}.json", *extra)
        assert r.returncode == 0, r.stderr
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["est"]["settings"]["model_sigma"] == "estimated"
    assert results["est"]["models"]["cond"]["condition"] == "sigma"
    assert results["known"]["settings"]["model_sigma"] == "known"

    def psnr(result):
        return [row["metrics"]["psnr_rgb_u8"] for row in result["results"] if row["model"] == "cond"]

    assert psnr(results["est"]) != psnr(results["known"])
    r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "25", DATA, "--weights", blind_weights,
             "--classical", "none", "--known-sigma")
    assert r.returncode == 2 and "--known-sigma is for weights conditioned on the noise level" in r.stderr


def test_the_round_trip_of_a_conditioned_model_goes_both_ways_at_one_level(cond_weights, monkeypatch):
    from irae_cli.benchmark.invertibility import invertibility

    seen = []
    model_type = type(load_weights(cond_weights).model)
    real_inverse = model_type.inverse

    def spy(model, x, level=None):
        seen.append(level)
        return real_inverse(model, x, level)

    monkeypatch.setattr(model_type, "inverse", spy)
    result = invertibility(weights=str(cond_weights), images=DATA, dtype="fp64", device="cpu")
    assert result["summary"]["passed"] and len(seen) == 4 and all(s is not None for s in seen)


def test_a_conditioned_export_takes_the_level_and_restores_like_torch(tmp_path, cond_weights, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from irae_cli.backends import OnnxRunner
    from irae_cli.onnx_export import LEVEL, read_metadata

    monkeypatch.setenv("IRAE_CACHE_DIR", str(tmp_path / "cache"))
    r = irae("export", cond_weights, "-o", tmp_path / "c.onnx")
    assert r.returncode == 0, r.stderr
    meta = read_metadata(tmp_path / "c.onnx")
    assert meta["condition"] == "sigma" and LEVEL in meta
    runner = OnnxRunner(tmp_path / "c.onnx")
    assert [i.name for i in runner.session.get_inputs()] == ["image", "level"]
    model = load_weights(cond_weights).model.eval()
    x = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # fp32 rounding of differently ordered kernels on outputs of magnitude ~4: far below 1/255
        assert (runner(x, LEVELS) - fold(model)(x, LEVELS)).abs().max() < 1e-4
    outs = {}
    for backend in ("torch", "onnxruntime"):
        r = irae("restore", "--task", "denoise", DATA / "coffee_128.png", tmp_path / f"{backend}.png", "--weights",
                 cond_weights, "--backend", backend, "--dtype", "fp32", env={"IRAE_CACHE_DIR": str(tmp_path / "c")})
        assert r.returncode == 0, r.stderr
        from irae_cli.imageio import read_image

        outs[backend] = read_image(tmp_path / f"{backend}.png")[0]
    assert (outs["torch"] - outs["onnxruntime"]).abs().max() <= 1 / 255 + 1e-6


def test_speed_times_a_conditioned_model_and_counts_its_level_map(cond_weights, blind_weights):
    from irae_cli.benchmark.speed import speed

    s = {}
    for name, w in (("cond", cond_weights), ("blind", blind_weights)):
        s[name] = speed(weights=str(w), size=64, batch_size=2, repeats=1, warmup=0, device="cpu", baseline=True)
        folder = speed(weights=str(w), folder=DATA, naive=True, repeats=1, warmup=0, device="cpu")
        modes = [r["mode"] for r in s[name]["results"] + folder["results"]]
        assert len(modes) == 4 and all(r["median_s"] > 0 for r in s[name]["results"] + folder["results"])
    # tiny: 8 coupling nets of width 16, the map's 3x3 weights once per pixel of each level (1/4, 1/16)
    extra = s["cond"]["model"]["mac_per_pixel"] - s["blind"]["model"]["mac_per_pixel"]
    assert extra == pytest.approx(2 * 2 * 16 * 9 * (1 / 4 + 1 / 16))


def test_docs_give_the_conditioned_medium_s_parameter_count():
    import re

    from irae_cli.model import parameter_count

    doc = (ROOT / "docs" / "model.md").read_text()
    row = re.search(r'^\| `medium`, `condition = "sigma"` \| ([\d,]+) \(\+([\d,]+)', doc, flags=re.M)
    cond, blind = parameter_count(create_model("medium", condition="sigma")), parameter_count(create_model("medium"))
    assert row and int(row[1].replace(",", "")) == cond and int(row[2].replace(",", "")) == cond - blind
    assert "--condition sigma" in (ROOT / "CHANGELOG.md").read_text().split("## [")[1]
