"""irae train: sampling, degradation, schedule, checkpoints, exact resume, time budget, CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from irae_cli import degradations as degrade, train as tr
from irae_cli.train import loss as tr_loss, trainer as tr_trainer
from irae_cli.files import atomic_save_safetensors
from irae_cli.tasks import get_task
from util import irae as run_irae

DATA = Path(__file__).parent / "data"
# Small and fast: 16 px patches of the 128 px test images, 4 patches per step.
FAST = {"arch": "tiny", "patch": 16, "batch_size": 4}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The four test images, one of them (grayscale) in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    for p in DATA.glob("*.png"):
        dest = root / ("sub" if "gray" in p.name else "") / p.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(p, dest)
    return root


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val")
    shutil.copy(DATA / "chelsea_128.png", root / "chelsea.png")
    return root


def run_train(tmp_path: Path, name: str, data: Path, given: dict, **session) -> tr.TrainResult:
    s = tr.Session(data=data, out=tmp_path / f"{name}.safetensors", quiet=True, **session)
    return tr.train(s, {**FAST, **given})


def irae(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return run_irae(*args, cwd=cwd, timeout=timeout)


# --------------------------------------------------------------------------- pieces

def test_lr_schedule_warms_up_then_decays_to_floor():
    c = tr.TrainConfig(steps=1000, lr=1e-3)
    assert tr.warmup_steps(c) == 20
    assert tr.lr_at(0, c) == pytest.approx(1e-3 / 20)
    assert tr.lr_at(19, c) == pytest.approx(1e-3)
    lrs = [tr.lr_at(s, c) for s in range(20, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert tr.lr_at(999, c) == pytest.approx(1e-3 * tr.LR_FLOOR, rel=1e-3)
    assert tr.lr_at(5000, c) == pytest.approx(1e-3 * tr.LR_FLOOR)


def test_patch_sampler_reads_flipped_rotated_crops_at_valid_positions():
    img = torch.arange(3 * 20 * 24, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 20, 24)
    small = torch.randint(0, 255, (3, 9, 11), dtype=torch.uint8)
    buffer = torch.cat([img.reshape(-1), small.reshape(-1)])
    data = tr.TrainData(buffer, torch.tensor([0, img.numel()]), torch.tensor([20, 9]), torch.tensor([24, 11]))
    p = 8
    sampler = tr.PatchSampler(data, p, torch.Generator().manual_seed(0))
    patches = sampler.sample(64)
    assert patches.shape == (64, 3, p, p) and patches.dtype == torch.uint8
    crops = {}
    for im in (img, small):
        for y in range(im.shape[1] - p + 1):
            for x in range(im.shape[2] - p + 1):
                c = im[:, y:y + p, x:x + p]
                for t in range(8):
                    d = c.transpose(-1, -2) if t & 1 else c
                    d = d.flip(-2) if t & 2 else d
                    d = d.flip(-1) if t & 4 else d
                    crops[d.numpy().tobytes()] = t
    seen = {crops[q.numpy().tobytes()] for q in patches}  # KeyError = a patch that is no crop of any image
    assert len(seen) > 4  # several of the 8 flips/rotations occur
    again = tr.PatchSampler(data, p, torch.Generator().manual_seed(0)).sample(64)
    assert torch.equal(patches, again)


def test_patch_sampler_weights_images_by_patch_positions():
    big, small = torch.zeros(3, 80, 80, dtype=torch.uint8), torch.full((3, 40, 40), 255, dtype=torch.uint8)
    data = tr.TrainData(torch.cat([big.reshape(-1), small.reshape(-1)]), torch.tensor([0, big.numel()]),
                        torch.tensor([80, 40]), torch.tensor([80, 40]))
    share = (tr.PatchSampler(data, 32, torch.Generator().manual_seed(1)).sample(4000) == 255).float().mean()
    assert share.item() == pytest.approx(81 / (81 + 2401), abs=0.015)


def _degrader(task: str, **cfg) -> tr.Degrader:
    c = tr.TrainConfig(task=task, patch=32, **cfg)
    t = get_task(task)
    return tr.Degrader(t, c, torch.device("cpu"), torch.Generator().manual_seed(0),
                       torch.Generator().manual_seed(1), t.default_task_params())


def test_degrader_noise_protocols():
    clean_u8 = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    noisy, clean = _degrader("denoise", sigma=(25.0, 25.0))(clean_u8)
    assert (noisy - clean).std().item() == pytest.approx(25 / 255, rel=0.05)
    edge, _ = _degrader("denoise", sigma=(50.0, 50.0), noise_protocol="paper")(
        torch.full((8, 3, 32, 32), 250, dtype=torch.uint8))
    assert edge.max() > 1.0  # paper protocol: unclipped float
    clipped, _ = _degrader("denoise", sigma=(50.0, 50.0), noise_protocol="clip")(
        torch.full((8, 3, 32, 32), 250, dtype=torch.uint8))
    assert clipped.max() <= 1.0 and torch.equal(clipped, torch.round(clipped * 255) / 255)
    ranged, clean = _degrader("denoise", sigma=(0.0, 55.0))(torch.full((64, 3, 32, 32), 128, dtype=torch.uint8))
    stds = (ranged - clean).flatten(1).std(dim=1) * 255
    assert stds.min() < 15 and stds.max() > 40 and stds.max() < 60  # one sigma per patch, over the range


def test_degrader_inpaint_masks_fill_holes_within_the_ratio_range():
    d = _degrader("inpaint", masks=("box", "strokes"), hole_range=(0.1, 0.3))
    assert d.masks.shape == (tr.MASK_BANK_SIZE, 1, 32, 32)
    ratios = d.masks.float().mean(dim=(1, 2, 3))
    assert ratios.min() >= 0.08 and ratios.max() <= 0.32  # box sides are whole pixels: ratios are approximate
    # A bright square on black: the pre-fill changes exactly the hole pixels, and only those.
    clean_u8 = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    clean_u8[:, :, 8:24, 8:24] = 200
    inp, clean = d(clean_u8)
    changed = (inp != clean).any(dim=1).float().mean(dim=(1, 2))
    assert changed.max() <= 0.32 and changed.mean() > 0.02


def test_ema_averages_parameters_and_copies_buffers():
    from irae_cli.model import create_model

    m = create_model("tiny")
    ema = tr.EMA(m, 0.9)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
        for mod in m.modules():
            if hasattr(mod, "initialized"):
                mod.initialized.fill_(True)
    ema.update(m, step=1000)
    name = ema.param_names[0]
    delta = ema.state[name] - (dict(m.named_parameters())[name].detach() - 1.0)
    assert torch.allclose(delta, torch.full_like(delta, 0.1))
    state = ema.state_dict()
    assert all(bool(state[k]) for k in ema.buffer_names if k.endswith("initialized"))


def test_optimizer_state_survives_safetensors(tmp_path):
    from irae_cli.model import create_model

    m = create_model("cnn-tiny")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.rand(1, 3, 16, 16)).mean().backward()
    opt.step()
    tensors, rest = tr.flatten_optimizer(opt)
    path = tmp_path / "opt.safetensors"
    atomic_save_safetensors(tensors, path, {"optimizer": json.dumps(rest)})
    opt2 = torch.optim.Adam(create_model("cnn-tiny").parameters(), lr=5.0)
    opt2.load_state_dict(tr.unflatten_optimizer(load_file(str(path)), rest))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k])


def test_low_precision_covers_only_the_coupling_nets():
    from irae_cli.inference import LowPrecision
    from irae_cli.model import create_model
    from irae_cli.model.flows import CouplingNet, InvConv1x1

    m = create_model("tiny")
    x = torch.rand(2, 3, 16, 16)
    m.initialize(x, x)
    keys = set(m.state_dict())
    precision = LowPrecision(m, torch.device("cpu"), torch.bfloat16).attach()
    dtypes = {}
    spies = [mod.register_forward_hook(lambda mod, a, out, k=type(mod).__name__: dtypes.setdefault(k, set()).add(
        out.dtype)) for mod in m.modules() if isinstance(mod, (CouplingNet, InvConv1x1, torch.nn.Conv2d))]
    y = m(x)
    assert y.dtype == torch.float32 and set(m.state_dict()) == keys
    assert dtypes["Conv2d"] == {torch.bfloat16}  # the coupling nets' convs ran in bf16
    assert dtypes["InvConv1x1"] == {torch.float32} and dtypes["CouplingNet"] == {torch.float32}
    precision.detach()
    for h in spies:
        h.remove()
    dtypes.clear()
    m(x)
    assert dtypes == {}


# --------------------------------------------------------------------------- whole runs (in-process)

def test_training_lowers_the_loss(tmp_path, photos):
    result = run_train(tmp_path, "loss", photos, {"steps": 60, "sigma": (25.0, 25.0), "lr": 2e-3},
                       log_every=1)
    losses = [i["loss"] for i in json.loads(result.log.read_text())["intervals"]]
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15])


def test_resume_continues_exactly_and_never_reinitialises(tmp_path, photos, monkeypatch):
    from irae_cli.model import IRAE

    calls = []
    original = IRAE.initialize
    monkeypatch.setattr(IRAE, "initialize", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    given = {"steps": 8, "ema": 0.9}
    full = run_train(tmp_path, "full", photos, given)
    assert calls == [1]
    part = run_train(tmp_path, "part", photos, given, stop_at=3)
    assert part.stopped == "stop-at" and part.steps == 3 and len(calls) == 2
    at_stop = load_file(str(part.checkpoint))
    resumed = tr.train(tr.Session(resume=part.checkpoint, out=part.out, quiet=True), {})
    assert len(calls) == 2  # the ActNorm initialisation did not run again
    assert resumed.steps == 8 and resumed.stopped == "completed"
    a, b = load_file(str(full.checkpoint)), load_file(str(resumed.checkpoint))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    wa, wb = load_file(str(full.out)), load_file(str(resumed.out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(at_stop["model.encoder.levels.0.0.actnorm.bias"], b["model.encoder.levels.0.0.actnorm.bias"])
    log = json.loads(resumed.log.read_text())
    assert [s["started_step"] for s in log["sessions"]] == [0, 3]
    assert resumed.summary["sessions"] == 2


def test_a_resume_validates_as_the_run_did(tmp_path, photos, val_dir):
    """--resume without --val goes on validating on the run's folder, crop and interval; a folder gone since
    is said and training goes on without it."""
    given = {"steps": 4}
    part = run_train(tmp_path, "v", photos, given, val=val_dir, val_every=2, val_crop=64, stop_at=2)
    resumed = tr.train(tr.Session(resume=part.checkpoint, out=part.out, quiet=True), {})
    assert resumed.val and set(resumed.val) == {"sigma15", "sigma25", "sigma50"}
    log = json.loads(resumed.log.read_text())
    assert log["val"][-1]["step"] == 4  # the resumed session validated (the stopped one did at step 2)
    moved = tmp_path / "gone"
    part = run_train(tmp_path / "b", "v", photos, given, val=shutil.copytree(val_dir, moved), stop_at=2)
    shutil.rmtree(moved)
    from irae_cli.train.checkpoint import load_checkpoint
    from irae_cli.train.setup import resume_validation

    s, notes = tr.Session(resume=part.checkpoint, out=part.out, quiet=True), []
    resume_validation(s, load_checkpoint(part.checkpoint)["meta"]["validation"], notes.append)
    assert s.val is None and "not there now" in notes[0] and "--val" in notes[0]


def test_init_from_starts_from_trained_weights_without_reinitialising(tmp_path, photos, monkeypatch):
    from irae_cli.model import IRAE

    base = run_train(tmp_path, "base", photos, {"steps": 6})
    calls = []
    original = IRAE.initialize
    monkeypatch.setattr(IRAE, "initialize", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    # another task, batch size and schedule: what a checkpoint cannot change on resume
    tuned = run_train(tmp_path, "tuned", photos, {"steps": 1, "lr": 1e-9, "ema": 0.0, "task": "jpeg",
                                                   "batch_size": 2, "init_from": str(base.out)})
    assert calls == []
    a, b = load_file(str(base.out)), load_file(str(tuned.out))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # one step at lr 1e-9 barely moves them
    record = tuned.summary["init_from"]
    assert record["sha256"] == base.sha256 and record["patches_seen"] == base.patches_seen
    assert record["task"] == "denoise"
    # the record survives a resume
    part = run_train(tmp_path, "part", photos, {"steps": 4, "init_from": str(base.out)}, stop_at=2)
    resumed = tr.train(tr.Session(resume=part.checkpoint, out=part.out, quiet=True), {})
    assert resumed.summary["init_from"]["sha256"] == base.sha256


def test_init_from_refuses_another_preset_before_reading_photos(tmp_path, photos):
    base = run_train(tmp_path, "base", photos, {"steps": 2})
    r = irae("train", tmp_path / "missing-photos", "--arch", "small", "--init-from", base.out, "--steps", "2",
             "-o", tmp_path / "x.safetensors")
    assert r.returncode != 0 and not (tmp_path / "x.safetensors").exists()
    line = r.stderr.strip().splitlines()[-1]
    assert "--init-from" in line and "tiny" in line and "small" in line, r.stderr


@pytest.mark.parametrize("task,arch", [("jpeg", "tiny"), ("inpaint", "tiny"), ("denoise", "cnn-tiny")])
def test_tasks_and_comparator_train(tmp_path, photos, val_dir, task, arch):
    from irae_cli.weights import load_weights

    result = run_train(tmp_path, task, photos, {"task": task, "arch": arch, "steps": 3}, val=val_dir)
    w = load_weights(result.out, expect_task=task)
    assert w.training["steps"] == 3 and w.training["arch"] == arch
    levels = {"jpeg": {"q10", "q20", "q30", "q40"}, "inpaint": {"box", "strokes"},
              "denoise": {"sigma15", "sigma25", "sigma50"}}[task]
    assert set(w.training["val"]) == levels
    for v in w.training["val"].values():
        assert math.isfinite(v["psnr_rgb_u8"]) and math.isfinite(v["input_psnr_rgb_u8"])
    if task == "inpaint":
        assert w.task_params["fill"] == 0.5 and "psnr_hole_rgb_u8" in w.training["val"]["box"]
        assert w.training["degradation"]["masks"] == ["box", "strokes"]


def test_trains_from_a_pack(tmp_path):
    from irae_cli.pack import build_pack

    pack = tmp_path / "train.safetensors"
    build_pack(sorted(DATA.glob("*.png")), pack, crop=32, max_bytes=200_000, seed=0)
    result = run_train(tmp_path, "frompack", pack, {"steps": 2})
    assert result.summary["data"]["kind"] == "pack" and result.summary["data"]["images"] > 4


@pytest.fixture
def fake_clock(monkeypatch):
    """The trainer's clock made fake: each training step advances it by ``per_step(n)`` seconds (n counts
    from 1), so budget tests do not depend on how fast this machine is or what else runs on it."""
    import time as real_time

    clock = {"t": 1000.0, "steps": 0, "per_step": lambda n: 0.5}

    class FakeTime:
        def __getattr__(self, name):
            return getattr(real_time, name)

        @staticmethod
        def monotonic():
            return clock["t"]

    original = tr.training_loss

    def timed_loss(*a, **k):
        clock["steps"] += 1
        clock["t"] += clock["per_step"](clock["steps"])
        return original(*a, **k)

    monkeypatch.setattr(tr_trainer, "time", FakeTime())
    monkeypatch.setattr(tr_trainer, "training_loss", timed_loss)
    return clock


def test_minutes_alone_sets_the_schedule_from_measured_speed(tmp_path, photos, fake_clock):
    result = run_train(tmp_path, "budget", photos, {}, minutes=2, stop_at=tr.CALIBRATION_STEPS[1] + 1)
    assert result.stopped == "stop-at"
    # 2 minutes at half a second per step: far more steps than were run
    assert result.steps_planned is not None and 150 < result.steps_planned <= 240
    assert result.summary["config"]["steps"] == result.steps_planned
    assert load_file(str(result.checkpoint))  # checkpoint written at the end


@pytest.mark.slow
def test_minutes_alone_sets_the_schedule_again_when_the_first_steps_were_slow(tmp_path, photos, fake_clock):
    # The first steps crawl (as beside four other runs starting on one GPU), then the run is fast:
    # the schedule must follow the later speed and use the budget, not end at a fraction of it.
    fake_clock["per_step"] = lambda n: 0.25 if n <= tr.CALIBRATION_STEPS[1] + 2 else 0.05
    notes = []
    result = run_train(tmp_path, "slow", photos, {}, minutes=0.25, echo=notes.append, log_every=5)
    # the first steps' speed alone plans ~50 steps for the 15 s; the rest run at 20 steps/s
    assert result.stopped == "completed", notes
    assert result.steps > 150, (result.steps, notes)
    assert any("set again" in n for n in notes), notes
    assert 12 <= fake_clock["t"] - 1000.0 <= 15.5


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path, photos):
    done = run_train(tmp_path, "done", photos, {"steps": 2})
    with pytest.raises(tr.IraeError, match="batch_size"):
        tr.train(tr.Session(resume=done.checkpoint, out=done.out, quiet=True), {"batch_size": 7, "steps": 2})
    with pytest.raises(tr.IraeError, match="already completed"):
        tr.train(tr.Session(resume=done.checkpoint, out=done.out, quiet=True), {})
    with pytest.raises(tr.IraeError, match="not an irae training checkpoint.*weights file"):
        tr.train(tr.Session(resume=done.out, out=tmp_path / "x.safetensors", quiet=True), {})


# --------------------------------------------------------------------------- the command

@pytest.mark.slow
def test_cli_trains_then_restore_uses_the_weights(tmp_path, photos):
    out = tmp_path / "w.safetensors"
    r = irae("train", "--task", "denoise", photos, "--arch", "tiny", "--steps", 6, "--patch", 16,
             "--batch-size", 4, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "step 6" in r.stderr  # progress (plain lines when stderr is not a terminal)
    assert "saved" in r.stdout and out.is_file()
    assert (tmp_path / "w.ckpt.safetensors").is_file() and (tmp_path / "w.log.json").is_file()
    from irae_cli.weights import load_weights

    w = load_weights(out, expect_task="denoise")
    t = w.training
    assert t["steps"] == 6 and t["patches_seen"] == 24 and t["degradation"]["sigma"] == [0.0, 55.0]
    assert t["data"]["images"] == 4 and t["seed"] == 0 and t["device"].startswith("cpu")
    restored = tmp_path / "restored.png"
    r = irae("restore", "--task", "denoise", "--weights", out, DATA / "coffee_128.png", restored)
    assert r.returncode == 0, r.stderr
    assert restored.is_file()

    before = out.read_bytes()
    r = irae("train", photos, "--arch", "tiny", "--steps", 2, "--out", out)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr and out.read_bytes() == before
    r = irae("train", photos, "--resume", tmp_path / "w.ckpt.safetensors", "--out", out, "--lr", "0.5")
    assert r.returncode == 2 and "lr" in r.stderr and out.read_bytes() == before


@pytest.mark.slow
def test_cli_minutes_stops_and_saves(tmp_path, photos):
    out = tmp_path / "m.safetensors"
    r = irae("train", photos, "--arch", "tiny", "--steps", 100000, "--minutes", 0.02, "--patch", 16,
             "--batch-size", 4, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    from irae_cli.weights import load_weights

    t = load_weights(out).training
    assert t["stopped"] == "time budget" and 1 <= t["steps"] < 100000


@pytest.mark.slow
def test_sigterm_stops_training_and_saves_like_ctrl_c(tmp_path, photos):
    # what a scheduler's time limit, `timeout` or `kill` sends; started the way a script starts a
    # background job (SIGINT ignored), where Ctrl-C's signal would not reach it
    import signal
    import time

    out = tmp_path / "w.safetensors"
    p = subprocess.Popen([sys.executable, "-m", "irae_cli", "train", str(photos), "--arch", "tiny", "--patch", "16",
                          "--steps", "100000", "--checkpoint-every", "5", "--compile", "off", "-o", str(out), "-q"],
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                            signal.SIG_IGN))
    ckpt = tmp_path / "w.ckpt.safetensors"
    deadline = time.monotonic() + 600  # a loaded 2-core machine took over 120 s to reach step 5
    while time.monotonic() < deadline and not ckpt.exists() and p.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint at step 5"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err
    summary = json.loads(load_file_metadata(out)["training"])
    assert summary["stopped"] == "interrupted" and summary["steps"] >= 5


def load_file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training(tmp_path, photos):
    result = tr.train(tr.Session(data=photos, out=tmp_path / "g.safetensors", quiet=True, device="cuda",
                                 dtype="bf16"), {**FAST, "patch": 32, "steps": 20})
    assert result.summary["dtype"] == "bf16" and result.summary["data"]["on_device"]


FAKE_ONE_GPU = """
import sys
import torch
if not torch.cuda.is_available():  # a CPU machine that tells irae (not torch itself) it has one GPU
    def _asked_by_irae():
        return sys._getframe(2).f_globals.get("__name__", "").startswith("irae_cli")
    _real_available, _real_count = torch.cuda.is_available, torch.cuda.device_count
    torch.cuda.is_available = lambda: True if _asked_by_irae() else _real_available()
    torch.cuda.device_count = lambda: 1 if _asked_by_irae() else _real_count()
"""


def _launcher_failure(stderr: str) -> str:
    """What a process said before torchrun's summary (a C++ ``terminate``/``what()`` line first), then the summary."""
    lines = stderr.splitlines()
    said = [ln for ln in lines if "terminate" in ln or "what()" in ln or "Error" in ln]
    return "\n".join(said[:20] + ["..."] + lines[-25:])


@pytest.mark.slow
@pytest.mark.torchrun
@pytest.mark.sees_gpu
def test_torchrun_two_cpu_processes(tmp_path, photos):
    """DistributedDataParallel over gloo: rank 0 initialises and writes; every rank's generators are saved.

    Run where a GPU is visible -- a real one, or on a CPU machine one that torch.cuda claims
    (sitecustomize) -- ``--device cpu`` must still mean gloo on the CPU (it used to mean NCCL on
    ``cuda:LOCAL_RANK``: "invalid device ordinal" for rank 1 of a one-GPU machine).
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_ONE_GPU)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "ddp.safetensors"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29500 + os.getpid() % 1000), "-m", "irae_cli", "train", str(photos),
                        "--arch", "tiny", "--steps", "3", "--patch", "16", "--batch-size", "4", "--out", str(out),
                        "--device", "cpu", "-q"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, _launcher_failure(r.stderr)
    assert r.stdout.count("saved") == 1  # only rank 0 reports and writes
    from irae_cli.weights import load_weights

    t = load_weights(out).training
    assert t["world_size"] == 2 and t["patches_seen"] == 3 * 4 * 2
    rng = {k for k in load_file(str(tmp_path / "ddp.ckpt.safetensors")) if k.startswith("rng.")}
    assert {"rng.data.rank0", "rng.data.rank1", "rng.host.rank0", "rng.host.rank1"} <= rng


def photos_tensor() -> torch.Tensor:
    names = ["astronaut_128.png", "coffee_128.png", "chelsea_128.png"]
    arrs = [np.asarray(Image.open(DATA / n).convert("RGB"), dtype=np.float32) / 255 for n in names]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def _inverse_gain(model, photos) -> float:
    """Mean gain ||inverse(restored + d) - y|| / ||d|| of a model on noisy test crops."""
    g = torch.Generator().manual_seed(5)
    y = photos[:, :, :64, :64] + torch.randn(3, 3, 64, 64, generator=g) * 25 / 255
    with torch.no_grad():
        restored = model(y)
        d = torch.randn(restored.shape, generator=g) * tr.INVERSE_PROBE
        back = model.inverse(restored + d)
    return ((back - y).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)).mean().item()


def test_inverse_gain_penalty_is_a_hinge():
    from irae_cli.model import create_model

    model = create_model("tiny")
    y = torch.rand(2, 3, 32, 32)
    model.initialize(y, y)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv3" in name:
                p.normal_(0, 0.05)
    restored = model(y)
    g = torch.Generator().manual_seed(0)
    assert tr.inverse_gain_penalty(model.inverse, restored, y, 1e9, g).item() == 0.0
    tight = tr.inverse_gain_penalty(model.inverse, restored, y, 1.0 + 1e-9, g)
    assert tight.item() > 0 and tight.requires_grad


@pytest.mark.slow
def test_inverse_gain_penalty_bounds_the_trained_inverse(tmp_path, photos):
    from irae_cli.weights import load_weights

    given = {"steps": 60, "sigma": (25.0, 25.0), "lr": 3e-3, "ema": 0}
    free = run_train(tmp_path, "free", photos, {**given, "inverse_gain": 0.0})
    held = run_train(tmp_path, "held", photos, {**given, "inverse_gain": 2.0})
    g_free = _inverse_gain(load_weights(free.out).model, photos_tensor())
    g_held = _inverse_gain(load_weights(held.out).model, photos_tensor())
    assert g_held < 0.8 * g_free, (g_held, g_free)


def test_divergence_guard_rolls_back_and_halves_the_learning_rate():
    from irae_cli.train.divergence import DivergenceError, DivergenceGuard
    from irae_cli.model import create_model

    model = create_model("tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = tr.EMA(model, 0.9)
    guard = DivergenceGuard(snapshot_every=3, max_rollbacks=2)
    for _ in range(60):  # a steady loss builds the running mean; snapshots are taken as steps pass
        assert not guard.is_bad(0.05)
        guard.after_good_check(model, opt, ema)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(100.0)  # a step that wrecked the parameters
    assert guard.is_bad(0.05 * 50) and guard.is_bad(float("nan"))
    note = guard.roll_back(model, opt, ema, step=61)
    assert "rolled back" in note and guard.lr_scale == 0.5 and guard.rollbacks == 1
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
    state = guard.state()
    fresh = DivergenceGuard()
    fresh.load_state(state)
    assert fresh.lr_scale == 0.5 and fresh.rollbacks == 1 and fresh.mean == pytest.approx(0.05)
    guard.roll_back(model, opt, ema, step=62)
    with pytest.raises(DivergenceError, match="diverged 3 times"):
        guard.roll_back(model, opt, ema, step=63)


def test_a_diverging_run_is_rolled_back_and_finishes(tmp_path, monkeypatch):
    """A run whose loss explodes once is rolled back in place and still writes its weights."""
    from irae_cli.train import divergence

    monkeypatch.setattr(divergence, "WARMUP_CHECKS", 5)
    real = tr_loss.training_loss
    calls = {"n": 0}

    def loss_with_one_spike(*args):
        calls["n"] += 1
        out = real(*args)
        return out * 1000 if calls["n"] == 12 else out

    monkeypatch.setattr(tr_trainer, "training_loss", loss_with_one_spike)
    data = tmp_path / "photos"
    data.mkdir()
    shutil.copy(DATA / "astronaut_128.png", data / "a.png")
    notes = []
    result = tr.train(tr.Session(data=data, out=tmp_path / "w.safetensors", quiet=True, echo=notes.append),
                      {"task": "denoise", "arch": "tiny", "steps": 20, "patch": 32, "batch_size": 2})
    assert result.steps == 20
    assert sum("rolled back" in n for n in notes) == 1
    log = json.loads((tmp_path / "w.log.json").read_text())
    assert log["rollbacks"] == [{"step": 11, "lr_scale": 0.5}]


# --------------------------------------------------------------------------- CUDA paths, emulated on the CPU

def test_train_device_follows_the_device_flag_on_an_emulated_one_gpu_machine(monkeypatch):
    import torch.distributed as dist

    from irae_cli.errors import IraeError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert tr.train_device("cpu", world=2, local_rank=1) == torch.device("cpu")
    assert tr.train_device("auto", world=2, local_rank=0) == torch.device("cuda", 0)
    assert tr.train_device("cuda", world=1, local_rank=0) == torch.device("cuda")
    with pytest.raises(IraeError, match="LOCAL_RANK 1 has no GPU of its own.*--device cpu"):
        tr.train_device("auto", world=2, local_rank=1)
    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: backends.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    tr.init_distributed(torch.device("cpu"))
    tr.init_distributed(torch.device("cuda", 0))
    assert backends == ["gloo", "nccl"]


def test_training_halves_its_batch_on_out_of_memory(tmp_path, photos, monkeypatch):
    """Emulated: the inverse-gain pass runs out of memory above 2 patches; the run goes on at 2."""
    real = tr.inverse_gain_penalty
    tried, freed = [], []

    def penalty(model, restored, *args):
        tried.append(restored.shape[0])
        if restored.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 119.00 GiB (emulated)")
        return real(model, restored, *args)

    monkeypatch.setattr(tr_trainer, "inverse_gain_penalty", penalty)
    monkeypatch.setattr(tr_trainer, "_free_device_memory", lambda device: freed.append(sys.exc_info()[0] is None))
    notes = []
    result = run_train(tmp_path, "oom", photos, {"steps": 4, "batch_size": 8, "inverse_gain_every": 1},
                       echo=notes.append)
    assert tried == [8, 4, 2, 2, 2, 2] and freed == [True, True]
    assert result.steps == 4 and result.patches_seen == 4 * 2 and result.summary["config"]["batch_size"] == 2
    assert [h["to"] for h in result.summary["oom_halvings"]] == [4, 2]
    assert sum("batch halved" in n for n in notes) == 2
    ckpt = tr.load_checkpoint(tmp_path / "oom.ckpt.safetensors")
    assert ckpt["meta"]["config"]["batch_size"] == 2  # a resume keeps the batch that fits


def _fake_tv_jpeg(monkeypatch):
    """torchvision 0.26's CUDA JPEG semantics on the CPU: encode returns device tensors, and the batched
    decoder refuses any that was not copied to the host ("Input list must contain tensors on CPU.")."""
    import torchvision.io as tio

    real_encode, real_decode = tio.encode_jpeg, tio.decode_jpeg
    on_device = []  # what the "CUDA" encoder returned: on the GPU until copied to the host

    def encode(images, quality=75):
        out = real_encode(list(images), quality=quality)
        on_device.extend(out)
        return out

    def decode(data, mode=tio.ImageReadMode.UNCHANGED, device="cpu"):
        if any(t is d for t in data for d in on_device):
            raise ValueError("Input list must contain tensors on CPU.")
        return real_decode(data, mode=mode)

    monkeypatch.setattr(tio, "encode_jpeg", encode)
    monkeypatch.setattr(tio, "decode_jpeg", decode)
    return real_encode, real_decode


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its codecs
def test_nvjpeg_training_round_trip_takes_host_bytes(monkeypatch):
    real_encode, real_decode = _fake_tv_jpeg(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    qualities = [30, 60, 30, 90, 60]
    y = degrade.jpeg_batch_cuda(x, qualities)
    for i, q in enumerate(qualities):
        assert torch.equal(y[i], real_decode(real_encode(x[i], quality=q)))
    assert not torch.equal(y, x)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_nvjpeg_training_engine():
    assert degrade.nvjpeg_problem(torch.device("cuda")) is None
    c = tr.TrainConfig(task="jpeg", subsampling="4:4:4", quality=(20, 20))
    d = tr.Degrader(get_task("jpeg"), c, torch.device("cuda"), torch.Generator("cuda").manual_seed(0),
                    torch.Generator().manual_seed(0), {})
    assert d.jpeg_engine.startswith("nvjpeg")
    ramp = torch.linspace(0, 255, 32, device="cuda")
    smooth = ramp.view(1, 1, 1, 32) * 0.5 + ramp.view(1, 1, 32, 1) * 0.5  # JPEG at q20 keeps it close
    clean = smooth.expand(4, 3, 32, 32).to(torch.uint8).contiguous()
    inp, _ = d(clean)
    assert inp.device.type == "cuda" and 0 < (inp * 255 - clean.float()).abs().mean() < 10


def test_inpaint_loss_counts_hole_pixels_only():
    clean = torch.rand(2, 3, 16, 16)
    holes = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    holes[:, :, 4:8, 4:12] = True
    restored = clean.clone()
    restored[:, :, ~holes[0, 0]] += 0.5  # wrong everywhere a restore keeps the known pixels anyway
    assert tr.training_loss(restored, clean, holes).item() == 0.0
    restored[holes.expand_as(restored)] += 0.25
    assert tr.training_loss(restored, clean, holes).item() == pytest.approx(0.25)
    assert tr.training_loss(restored, clean, None).item() > 0.25  # denoise and jpeg: the whole image



@pytest.mark.slow
def test_l2_loss_is_the_mean_squared_error_over_the_holes(tmp_path, photos):
    clean = torch.rand(2, 3, 16, 16)
    holes = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    holes[:, :, 2:6, 3:9] = True
    restored = clean.clone()
    restored[holes.expand_as(restored)] += 0.5
    assert tr.training_loss(restored, clean, holes, "l2").item() == pytest.approx(0.25)
    assert tr.training_loss(restored, clean, None, "l2").item() == pytest.approx(0.25 * 24 / 256)
    result = run_train(tmp_path, "l2", photos, {"steps": 3, "loss": "l2"})
    assert json.loads(result.out.with_suffix(".log.json").read_text())["config"]["loss"] == "l2"
    bad = irae("train", photos, "-o", tmp_path / "w.safetensors", "--loss", "huber")
    assert bad.returncode == 2 and "--loss must be one of l1, l2" in bad.stderr
    assert not (tmp_path / "w.safetensors").exists()

# --------------------------------------------------------------------------- --compile

def test_compile_auto_leaves_a_short_session_eager(tmp_path, photos):
    notes = []
    run_train(tmp_path, "auto", photos, {"steps": 5}, compile="auto", echo=notes.append)
    assert not any("torch.compile" in n for n in notes)
    assert "compiled_at_step" not in json.loads((tmp_path / "auto.log.json").read_text())["sessions"][-1]


def test_a_wrong_compile_mode_is_a_usage_error_before_any_work(tmp_path, photos):
    r = irae("train", photos, "-o", tmp_path / "w.safetensors", "--compile", "always")
    assert r.returncode == 2 and "--compile must be one of auto, on, off" in r.stderr
    assert not list(tmp_path.iterdir())


def test_a_fine_probe_runs_its_inverse_passes_in_fp32_beside_bf16_coupling_nets(tmp_path, photos, monkeypatch):
    """bf16 (8-bit mantissa) cannot resolve a 1e-5 step: the probe's passes go back to fp32, the loss's stay bf16."""
    import irae_cli.train.trainer as trainer_module

    seen = {"probe": set(), "loss": set()}
    models = []
    penalty, loss = trainer_module.inverse_gain_penalty, trainer_module.training_loss

    def spy_penalty(inverse, *args):
        models.append(inverse.__self__)
        hooks = [m.register_forward_hook(lambda m, a, out: seen["probe"].add(out.dtype))
                 for m in models[-1].modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            return penalty(inverse, *args)
        finally:
            for h in hooks:
                h.remove()

    def spy_loss(*args):
        if models:  # from the second step on: the coupling nets as the loss's forward pass saw them
            seen["loss"].update(n.autocast_dtype for n in models[-1].modules() if hasattr(n, "autocast_dtype"))
        return loss(*args)

    monkeypatch.setattr(trainer_module, "inverse_gain_penalty", spy_penalty)
    monkeypatch.setattr(trainer_module, "training_loss", spy_loss)
    run_train(tmp_path, "fine", photos, {"steps": 3, "inverse_gain": 50.0, "inverse_probe": 1e-5,
                                         "inverse_gain_every": 1}, dtype="bf16", compile="off")
    assert seen == {"probe": {torch.float32}, "loss": {torch.bfloat16}}


def test_a_small_inverse_probe_is_measured_against_a_second_inverse_pass():
    """Below SMALL_PROBE the round trip's own error would swamp the probe: it is taken out by a second pass."""
    restored = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    inp = restored.clone()
    offset = 1e-3  # a round trip that misses by this much everywhere, with gain exactly 1

    def inverse(x):
        return x + offset

    def penalty(probe, max_gain):
        return tr.inverse_gain_penalty(inverse, restored, inp, max_gain, torch.Generator().manual_seed(1), probe)

    assert penalty(1e-5, 1.001).item() == 0.0  # slope 1, measured as 1
    assert penalty(1e-5, 0.5).item() == pytest.approx(np.log(2) ** 2, rel=1e-3)
    assert penalty(1e-3, 1.001).item() > 0  # the large probe's ratio includes the offset


def test_minutes_alone_uses_the_budget_when_the_run_speeds_up_late():
    # A job beside the run ends at 70 % of the budget and the steps go 4x faster: the schedule set at
    # half the budget would end at ~77 % of it; set again later, the run uses (nearly) all of it.
    from irae_cli.train.budget import TimeBudget

    t = [0.0]
    budget = TimeBudget(10, 0.0, lambda: t[0], None)  # 600 s
    steps, step = None, 0
    while steps is None or step < steps:
        step += 1
        t[0] += 1.0 if t[0] < 420 else 0.25
        if step in (2, 12):
            steps = budget.calibrate(step, step, 64 * 64) or steps
        elif steps is not None:
            steps = budget.recalibrate(step, steps, 1) or steps
    assert t[0] <= 600 and t[0] >= 0.95 * 600, (t[0], step)
