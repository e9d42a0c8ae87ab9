"""Weights files: safetensors round trip, metadata, registry sha256, and one-line errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from irae_cli.errors import WeightsError
from irae_cli.model import create_model
from irae_cli.weights import default_weights_for, load_weights, register, save_weights


@pytest.fixture()
def tiny_file(tmp_path, photos):
    model = create_model("tiny").eval()
    model.initialize(photos + 0.1 * torch.randn_like(photos), photos)
    path = tmp_path / "w.safetensors"
    save_weights(model, path, task="denoise", training={"steps": 3})
    return model, path


def test_save_load_identical_outputs_and_metadata(tiny_file, photos):
    model, path = tiny_file
    loaded = load_weights(path)
    meta = loaded.metadata
    assert meta["arch"] == "irae" and meta["task"] == "denoise"
    assert json.loads(meta["config"])["width"] == 16
    assert loaded.training == {"steps": 3}
    with torch.no_grad():
        assert torch.equal(loaded.model(photos), model(photos))


def test_load_never_reinitialises(tiny_file, photos):
    model, path = tiny_file
    loaded = load_weights(path)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with torch.no_grad():
        loaded.model(photos * 5)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    with pytest.raises(RuntimeError):
        loaded.model.initialize(photos, photos)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")


def test_not_safetensors(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_text("hello, I am text")
    with pytest.raises(WeightsError, match=r"x\.safetensors: not a readable safetensors"):
        load_weights(path)


def test_truncated(tiny_file):
    _, path = tiny_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated") as e:
        load_weights(path)
    assert "\n" not in str(e.value)


def test_safetensors_without_irae_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="without irae metadata"):
        load_weights(path)


def test_config_that_does_not_match_tensors(tiny_file, tmp_path):
    model, path = tiny_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = json.dumps({**json.loads(meta["config"]), "width": 32})
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match="do not match"):
        load_weights(bad)
    meta["config"] = json.dumps({**json.loads(meta["config"]), "arch": "resnet"})
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match="unknown architecture"):
        load_weights(bad)


def test_wrong_task(tiny_file):
    _, path = tiny_file
    with pytest.raises(WeightsError, match="not 'jpeg'"):
        load_weights(path, expect_task="jpeg")


def test_registry_sha256_checked(tiny_file, tmp_path):
    _, path = tiny_file
    register("my-denoise", path, task="denoise", weights_dir=tmp_path)
    assert default_weights_for("denoise", weights_dir=tmp_path) == "my-denoise"
    assert load_weights("my-denoise", weights_dir=tmp_path).sha256
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the registry"):
        load_weights("my-denoise", weights_dir=tmp_path)
    with pytest.raises(WeightsError, match="does not match the registry"):
        load_weights(path, weights_dir=tmp_path)  # a shipped file passed by path is checked too


def test_a_failed_registry_write_leaves_the_old_index_whole(tiny_file, tmp_path, monkeypatch):
    """The index is replaced whole, never truncated first: a restore reading it meanwhile, or a full disk,
    must not leave a partial file."""
    import irae_cli.files as files

    _, path = tiny_file
    register("my-denoise", path, task="denoise", weights_dir=tmp_path)
    before = (tmp_path / "index.json").read_bytes()

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError):
        register("other-denoise", path, task="denoise", weights_dir=tmp_path)
    assert (tmp_path / "index.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_uninitialised_model_is_refused(tmp_path):
    path = tmp_path / "raw.safetensors"
    save_weights(create_model("tiny"), path, task="denoise")
    with pytest.raises(WeightsError, match="never initialised"):
        load_weights(path)


def test_cnn_round_trip(tmp_path, photos):
    model = create_model("cnn-tiny").eval()
    path = tmp_path / "cnn.safetensors"
    save_weights(model, path, task="denoise")
    loaded = load_weights(path)
    with torch.no_grad():
        assert torch.equal(loaded.model(photos), model(photos))


@pytest.mark.slow
def test_cli_truncated_weights_one_line_nonzero_exit(tiny_file, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    _, path = tiny_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "coffee_128.png", src / "coffee.png")
    proc = subprocess.run([sys.executable, "-m", "irae_cli", "restore", "--task", "denoise", str(src),
                           str(tmp_path / "out"), "--weights", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "truncated" in lines[0]
    assert not (tmp_path / "out").exists()


def test_shipped_weights_found_in_a_checkout_then_in_an_installed_copy(tmp_path, monkeypatch):
    import sysconfig

    from irae_cli import weights as W

    monkeypatch.delenv("IRAE_WEIGHTS_DIR", raising=False)
    assert (W.shipped_weights_dir() / W.INDEX_FILE).is_file()  # this checkout's weights/

    # A non-editable install: the package sits in site-packages, the weights under <data>/share/irae/weights.
    site = tmp_path / "site-packages" / "irae_cli"
    site.mkdir(parents=True)
    monkeypatch.setattr(W, "__file__", str(site / "weights.py"))
    assert not (W.shipped_weights_dir() / W.INDEX_FILE).is_file()
    installed = tmp_path / "prefix" / "share" / "irae" / "weights"
    installed.mkdir(parents=True)
    (installed / W.INDEX_FILE).write_text("{}")
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme=None: str(tmp_path / "prefix"))
    assert W.shipped_weights_dir() == installed

    monkeypatch.setenv("IRAE_WEIGHTS_DIR", str(tmp_path / "mine"))
    assert W.shipped_weights_dir() == tmp_path / "mine"


@pytest.mark.slow
def test_a_wheel_carries_every_registered_weights_file(tmp_path):
    """`pip install .` (not editable) must bring the shipped weights along: they are in the wheel's data."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    import shutil

    pytest.importorskip("setuptools")
    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"  # pip builds in the source folder: a copy keeps the checkout clean
    for part in ("irae_cli", "weights"):
        shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(root / part, src / part)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("irae-*.whl"))
    names = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if "/share/irae/weights/" in n}
    index = json.loads((root / "weights" / "index.json").read_text())
    assert "index.json" in names
    for entry in index.values():
        assert entry["file"] in names
        assert Path(entry.get("card", entry["file"])).name in names


def test_average_weights_script_writes_the_mean_model_which_stays_invertible(tiny_file, photos, tmp_path):
    """training/levers/average_weights.py: the element-wise mean of two runs from one start, still a bijection;
    files that are not from one preset are refused, and an existing output is never replaced."""
    import subprocess
    import sys
    from pathlib import Path

    model, path = tiny_file
    other = tmp_path / "other.safetensors"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_weights(model, other, task="denoise", training={"steps": 5})
    script = Path(__file__).resolve().parent.parent / "training" / "levers" / "average_weights.py"
    out = tmp_path / "soup.safetensors"
    r = subprocess.run([sys.executable, str(script), str(out), str(path), str(other)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b, soup = (load_weights(p) for p in (path, other, out))
    sa, sb, ss = (w.model.state_dict() for w in (a, b, soup))
    moved = [k for k in sa if sa[k].is_floating_point() and not torch.equal(sa[k], sb[k])]
    assert moved and all(torch.allclose(ss[k], (sa[k] + sb[k]) / 2, atol=1e-6) for k in moved)
    assert [s["steps"] for s in soup.training["averaged"]] == [3, 5]
    with torch.no_grad():
        restored = soup.model(photos)
        assert (soup.model.inverse(restored) - photos).abs().max() < 1e-4
    r = subprocess.run([sys.executable, str(script), str(out), str(path), str(other)], capture_output=True, text=True)
    assert r.returncode == 2 and "exists" in r.stderr
    small = tmp_path / "cnn.safetensors"
    save_weights(create_model("cnn-tiny"), small, task="denoise")
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "x.safetensors"), str(path), str(small)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "differ" in r.stderr and not (tmp_path / "x.safetensors").exists()
