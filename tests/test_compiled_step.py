"""--compile: the whole training step (forward, inverse-gain probe, loss, backward, clipping, Adam, EMA)
as one graph with no break and no host sync, making the updates an eager run makes."""

import json
from pathlib import Path

import pytest
import torch

import irae_cli.train as tr
from irae_cli.train.divergence import DivergenceGuard
from irae_cli.train.loss import probe_direction
from irae_cli.train.trainer import Trainer
from util import whole_step_graph_breaks

FAST = {"arch": "tiny", "patch": 16, "batch_size": 4}


def _trainer(tmp_path, photo_folder: Path, given, dtype="fp32") -> Trainer:
    s = tr.Session(data=photo_folder, out=tmp_path / "w.safetensors", quiet=True, compile="off", dtype=dtype)
    t = Trainer(s, {**FAST, "steps": 50, **given})
    assert t._step()  # one eager step: the ActNorm initialisation, Adam's state
    return t


@pytest.mark.parametrize("given,dtype", [({"inverse_gain": 50.0}, "fp32"),
                                         ({"inverse_gain": 50.0, "inverse_probe": 1e-5}, "bf16"),
                                         ({"low_sigma_floor": 10.0, "clip": 0.5}, "fp32")],
                         ids=["probe", "fine-probe-bf16", "low-sigma-weight"])
def test_the_whole_step_is_one_graph(tmp_path, photo_folder, given, dtype):
    assert whole_step_graph_breaks(_trainer(tmp_path, photo_folder, given, dtype)) == 0


@pytest.mark.slow
def test_the_medium_step_is_one_graph(tmp_path, photo_folder):
    assert whole_step_graph_breaks(_trainer(tmp_path, photo_folder, {"arch": "medium", "batch_size": 2,
                                                              "inverse_gain": 50.0}, "bf16")) == 0


def test_the_whole_step_makes_the_eager_update(tmp_path, photo_folder):
    """Same batch, same state: the uncompiled whole step and the trainer's eager update agree (the low-sigma
    weight and clipping included), and the EMA moved."""
    given = {"low_sigma_floor": 10.0, "clip": 0.05, "inverse_gain": 50.0}
    a, b = _trainer(tmp_path / "a", photo_folder, given), _trainer(tmp_path / "b", photo_folder, given)
    b.train_step.take_adam_state()
    ema_before = {k: v.clone() for k, v in b.ema.state_dict().items()}
    torch.manual_seed(0)
    inp, clean = a.degrader(a.sampler.sample(4))
    sigma = a.degrader.last_sigma
    d = probe_direction(inp.shape, a.data_gen, inp.device)
    # eager, as the trainer does it (the probe drawn from the same generator state)
    state = b.data_gen.get_state()
    b.data_gen.set_state(a.data_gen.get_state())
    a.data_gen.set_state(state)
    for group in a.optimizer.param_groups:
        group["lr"] = 1e-3
    a.degrader.last_sigma = sigma
    a.state.step = 1  # the probe's turn
    loss_a = a._update_once(inp, clean)
    b.train_step.lr.fill_(1e-3)
    b.train_step.ema_weight.fill_(1.0 - tr.config.ema_decay_at(1, b.config.ema))
    loss_b = b.train_step(inp, clean, None, sigma, d)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    pa, pb = a.model.state_dict(), b.model.state_dict()
    assert max((pa[k].float() - pb[k].float()).abs().max().item() for k in pa) < 1e-6
    ea, eb = a.ema.state_dict(), b.ema.state_dict()
    assert max((ea[k].float() - eb[k].float()).abs().max().item() for k in ea) < 1e-6
    assert any(not torch.equal(ema_before[k], eb[k]) for k in eb)


def test_the_guard_reads_a_compiled_interval():
    g = DivergenceGuard()
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    assert not g.interval_diverged(0.1, 0.2, 60, "l1", (model, opt, None))
    assert g.checks == 60 and g.mean == pytest.approx(0.1)
    assert g.interval_diverged(0.1, float("nan"), 10, "l1", (model, opt, None))
    assert g.interval_diverged(0.1, 0.61, 10, "l1", (model, opt, None))  # a step jumped 6x above the mean
    # l2: the guard compares error sizes, sqrt(0.3) = 0.55 < 6 x 0.1
    assert not g.interval_diverged(0.0025, 0.3, 10, "l2", (model, opt, None))
    assert 0.05 < g.mean < 0.1


@pytest.mark.slow
def test_compiled_training_follows_the_eager_losses(tmp_path, photo_folder):
    """--compile on, 8 steps: eager for the 3 timed ones, then 5 compiled (inductor on the CPU); the losses
    and the saved weights match an eager run to float tolerance, the run says it compiles and records 0
    graph breaks.  The probe runs every step, so one graph compiles (inductor's C++ build of a step takes
    minutes on a cold 2-core machine); the other kinds of step are traced whole in the tests above."""
    given = {**FAST, "steps": 8, "inverse_gain": 50.0, "inverse_gain_every": 1}

    def run(name, compile, notes):
        s = tr.Session(data=photo_folder, out=tmp_path / f"{name}.safetensors", quiet=True, dtype="fp32",
                       compile=compile, log_every=1, echo=notes.append)
        result = tr.train(s, given)
        log = json.loads((tmp_path / f"{name}.log.json").read_text())
        return result, log, [i["loss"] for i in log["intervals"]]

    eager, _, eager_losses = run("eager", "off", [])
    notes = []
    compiled, log, compiled_losses = run("compiled", "on", notes)
    assert any("torch.compile" in n for n in notes) and not any("failed" in n for n in notes)
    assert log["sessions"][-1]["compiled_at_step"] == 3
    assert compiled.summary["compiled"]["graph_breaks"] == 0
    assert log["sessions"][-1]["compiled"]["graph_breaks"] == 0 and log["sessions"][-1]["compiled"]["compile_s"] > 0
    assert "compiled" not in eager.summary
    assert len(eager_losses) == 8 and compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(eager.out), load_file(compiled.out)
    assert max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point()) < 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_whole_step_is_captured_without_host_syncs(tmp_path, photo_folder):
    s = tr.Session(data=photo_folder, out=tmp_path / "w.safetensors", quiet=True, device="cuda", compile="on",
                   log_every=5)
    result = tr.train(s, {**FAST, "steps": 12})
    assert {k: result.summary["compiled"][k] for k in ("graph_breaks", "host_syncs_per_step")} == {
        "graph_breaks": 0, "host_syncs_per_step": 0}
    assert result.summary["compiled"]["compile_s"] > 0


def test_benchmark_times_the_eager_training_step(tmp_path):
    from irae_cli.benchmark.speed import speed

    s = speed(arch="tiny", train=True, size=16, batch_size=2, repeats=2, warmup=1, device="cpu")
    assert s["settings"]["train"] is True and [r["mode"] for r in s["results"]] == ["train eager"]
    assert s["results"][0]["patches_per_s"] > 0


def test_benchmark_train_is_for_presets_a_usage_error(tmp_path):
    from util import irae

    r = irae("benchmark", "speed", "--train", "--weights", "irae-denoise-small")
    assert r.returncode == 2 and "--train times an untrained preset" in r.stderr


@pytest.mark.slow
def test_benchmark_times_eager_and_compiled_training_in_one_run(monkeypatch):
    """The benchmark's plumbing around the compiled step; inductor's code for it is checked against eager
    above, so here the graph is traced (forward and backward, whole) but runs uncompiled (aot_eager)."""
    import irae_cli.inference as inference
    from irae_cli.benchmark.speed import speed

    def traced(fn, dynamic=None, fullgraph=False, **options):
        return torch.compile(fn, dynamic=dynamic, fullgraph=fullgraph, backend="aot_eager")

    monkeypatch.setattr(inference, "compiled", traced)

    s = speed(arch="tiny", train=True, compile=True, size=16, batch_size=2, repeats=3, warmup=1, device="cpu")
    eager, compiled = s["results"]
    assert (eager["mode"], compiled["mode"]) == ("train eager", "train compiled")
    assert compiled["graph_breaks"] == 0 and compiled["host_syncs_per_step"] is None
    assert compiled["patches_per_s"] > 0 and compiled["compile_s"] > 0


def test_a_compiled_interval_that_diverged_is_rolled_back(tmp_path, photo_folder, monkeypatch):
    """The guard sees compiled steps at the log: a non-finite loss among them rolls the run back to its
    last snapshot, the learning rate halves, and the run goes on (the step run uncompiled here)."""
    import irae_cli.train.compiled as compiled_module

    calls = []

    def fake_compile(step, device):
        def run(*args):
            calls.append(1)
            loss = step(*args)
            return loss * float("nan") if len(calls) == 3 else loss
        return run

    monkeypatch.setattr(compiled_module, "compile_whole_step", fake_compile)
    notes = []
    s = tr.Session(data=photo_folder, out=tmp_path / "w.safetensors", quiet=True, dtype="fp32", compile="on",
                   log_every=2, echo=notes.append)
    result = tr.train(s, {**FAST, "steps": 12})
    log = json.loads((tmp_path / "w.log.json").read_text())
    assert len(calls) == 9 and result.steps == 12
    assert [r["lr_scale"] for r in log["rollbacks"]] == [0.5] and any("rolled back" in n for n in notes)
    assert all(i["loss"] == i["loss"] for i in log["intervals"])  # the diverged interval is not logged
    assert log["sessions"][-1]["compiled"]["graph_breaks"] == 0
