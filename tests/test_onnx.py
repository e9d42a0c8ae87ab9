"""ONNX export and the ONNX Runtime backend: the file, its metadata and cache, and restores equal to torch's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from util import irae

from irae_cli.errors import IraeError
from irae_cli.imagewrite import encode_png16
from irae_cli.weights import read_index

DATA = Path(__file__).parent / "data"
SHIPPED_IRAE = sorted(name for name in read_index() if name.startswith("irae-"))


@pytest.fixture()
def ort(monkeypatch, tmp_path):
    """onnx and onnxruntime (skipped without them), with the export cache in this test's folder."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setenv("IRAE_CACHE_DIR", str(tmp_path / "cache"))
    return ort


@pytest.mark.parametrize("name", SHIPPED_IRAE)
def test_export_of_each_shipped_irae_model_passes_the_checker_and_runs_like_torch(ort, name):
    import onnx

    from irae_cli.model.condition import TYPICAL_LEVELS, condition_of
    from irae_cli.model.folded import fold
    from irae_cli.onnx_export import export_onnx, export_source
    from irae_cli.tasks import get_task
    from irae_cli.weights import load_weights

    loaded = load_weights(name)
    params = get_task(loaded.task).params_for_weights(loaded.task_params, loaded.model.config.channels)
    data = export_onnx(loaded.model, loaded.task, params, export_source(loaded.sha256, loaded.training))
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["task"] == loaded.task and meta["source_sha256"] == loaded.sha256
    assert meta["preset"] == loaded.training["arch"] and int(meta["size_multiple"]) == loaded.model.size_multiple
    m = loaded.model.size_multiple
    # Sizes the export never saw: the graph's batch, height and width are dynamic.
    x = torch.rand(2, loaded.model.config.channels, 3 * m, 5 * m, generator=torch.Generator().manual_seed(1))
    condition = condition_of(loaded.model.config)  # a conditioned model (the JPEG default) takes its level too
    levels = None if condition == "none" else torch.full((2,), float(TYPICAL_LEVELS[condition]))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy(), **({} if levels is None else {"level": levels.numpy()})}
    y = session.run(["restored"], feed)[0]
    with torch.inference_mode():
        ref = fold(loaded.model)(x, levels)
    assert y.shape == tuple(ref.shape) and np.abs(y - ref.numpy()).max() * 255 < 1e-2


def _levels_apart(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    return np.abs(a.astype(np.int64) - b.astype(np.int64)) / (257 if bits == 16 else 1)


def _inputs(folder: Path) -> None:
    """Odd sizes, grey, alpha and 16-bit, cut from the test photos."""
    folder.mkdir()
    astronaut = np.asarray(Image.open(DATA / "astronaut_128.png").convert("RGB"))
    Image.fromarray(astronaut[:101, :77]).save(folder / "odd.png")
    Image.open(DATA / "camera_128_gray.png").convert("L").crop((0, 0, 93, 128)).save(folder / "grey.png")
    coffee = np.asarray(Image.open(DATA / "coffee_128.png").convert("RGB"))
    alpha = np.full(coffee.shape[:2], 255, np.uint8)
    alpha[20:60, 30:90] = 128
    Image.fromarray(np.dstack([coffee, alpha]), "RGBA").save(folder / "alpha.png")
    chelsea = np.asarray(Image.open(DATA / "chelsea_128.png").convert("RGB")).astype(np.uint16) * 257
    chelsea[::2] += 100  # values between the 8-bit levels
    (folder / "deep.png").write_bytes(encode_png16(chelsea))


@pytest.mark.slow
def test_restore_through_onnxruntime_equals_torch(ort, tmp_path):
    from irae_cli.imageio import read_image

    src = tmp_path / "in"
    _inputs(src)
    runs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        r = irae("restore", "--task", "denoise", src, out, "--weights", "irae-denoise-small", "--backend", backend,
                 "--dtype", "fp32", "--tile", "64", "--tile-overlap", "16", "--report", tmp_path / f"{backend}.jsonl")
        assert r.returncode == 0, r.stderr
        lines = [json.loads(line) for line in (tmp_path / f"{backend}.jsonl").read_text().splitlines()]
        assert {line["backend"] for line in lines} == {backend} and all(line["tiles"] > 1 for line in lines)
        runs[backend] = out
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    for name in ("odd.png", "grey.png", "alpha.png", "deep.png"):
        a, meta = read_image(runs["torch"] / name)
        b, meta_b = read_image(runs["onnxruntime"] / name)
        assert meta.bits == meta_b.bits and a.shape == b.shape
        bits = meta.bits
        scale = 65535 if bits == 16 else 255
        apart = _levels_apart(np.rint(a.numpy() * scale), np.rint(b.numpy() * scale), bits)
        assert apart.max() <= 1, name
        # 16-bit outputs differ by a unit of 1/65535 at most rounding points; in 8-bit levels that is nothing
        assert (apart >= (1 if bits == 8 else 0.5)).mean() <= 1e-4, name
        if meta.alpha is not None:
            assert np.array_equal(meta.alpha, meta_b.alpha)


def test_inpainting_through_onnxruntime_keeps_known_pixels_and_equals_torch(ort, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    photo = np.asarray(Image.open(DATA / "chelsea_128.png").convert("RGB"))
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[40:70, 50:90] = 0  # the hole
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(src / "holed.png")
    outs = []
    for backend in ("torch", "onnxruntime"):
        r = irae("restore", "--task", "inpaint", src, tmp_path / backend, "--mask-from", "alpha",
                 "--backend", backend, "--dtype", "fp32")
        assert r.returncode == 0, r.stderr
        outs.append(np.asarray(Image.open(tmp_path / backend / "holed.png").convert("RGB")).astype(int))
    known = alpha == 255
    assert np.array_equal(outs[1][known], photo[known])
    apart = np.abs(outs[0] - outs[1])
    assert apart.max() <= 1 and (apart > 0).mean() <= 1e-4


def test_restore_reuses_the_cached_export(ort, tmp_path):
    src = DATA / "astronaut_128.png"
    first = irae("restore", "--task", "denoise", src, tmp_path / "a.png", "--weights", "irae-denoise-small",
                 "--backend", "onnxruntime", env={"IRAE_CACHE_DIR": str(tmp_path / "cache")})
    assert first.returncode == 0, first.stderr
    (cached,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    sha = read_index()["irae-denoise-small"]["sha256"]
    assert cached.name.startswith(sha)
    before = cached.stat()
    second = irae("restore", "--task", "denoise", src, tmp_path / "b.png", "--weights", "irae-denoise-small",
                  "--backend", "onnxruntime", env={"IRAE_CACHE_DIR": str(tmp_path / "cache")})
    assert second.returncode == 0, second.stderr
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # read, not written again
    assert "warning" not in first.stderr + second.stderr


def test_a_failed_export_falls_back_to_torch_with_one_warning(ort, monkeypatch, capsys):
    import irae_cli.onnx_export as onnx_export
    from irae_cli.inference import Restorer
    from irae_cli.tasks import get_task
    from irae_cli.weights import load_weights

    def broken(*args, **kwargs):
        raise RuntimeError("exporter says no\nsecond line")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    loaded = load_weights("irae-denoise-small")
    restorer = Restorer(loaded.model, get_task("denoise"), backend="onnxruntime", dtype="fp32", tile=0,
                        source={"sha256": "not-cached-" + loaded.sha256})
    assert restorer.backend == "torch"
    x = torch.rand(1, 3, 16, 16)
    assert restorer(x).shape == x.shape
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exporter says no" in err[0] and "restoring with torch" in err[0]


def test_without_the_extra_onnxruntime_is_a_one_line_usage_error(tmp_path):
    # onnxruntime made unimportable for the subprocess, whether or not it is installed here.
    fake = tmp_path / "no_extra"
    fake.mkdir()
    (fake / "onnxruntime.py").write_text("raise ImportError('simulated: onnxruntime is not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), str(Path(__file__).resolve().parent.parent)])}
    out = tmp_path / "out"
    r = irae("restore", "--task", "denoise", DATA / "astronaut_128.png", out, "--backend", "onnxruntime", env=env)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.count("\n") == 1 and "irae[onnx]" in r.stderr and "--backend onnxruntime" in r.stderr
    r = irae("export", "irae-denoise-small", "-o", tmp_path / "m.onnx", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "irae[onnx]" in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_backend_usage_errors_exit_2_before_any_work(ort, tmp_path):
    src = DATA / "astronaut_128.png"
    for extra, words in ((["--backend", "tensorrt"], "--backend 'tensorrt'"),
                         (["--backend", "onnxruntime", "--dtype", "bf16"], "runs fp32")):
        r = irae("restore", "--task", "denoise", src, tmp_path / "out", *extra)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "out").exists()


def test_export_command_writes_a_checked_file_with_its_metadata_and_never_overwrites(ort, tmp_path):
    import onnx

    out = tmp_path / "jpeg.onnx"
    r = irae("export", "irae-jpeg-small", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "jpeg" in r.stdout and "size multiple" in r.stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    entry = read_index()["irae-jpeg-small"]
    assert meta["source_sha256"] == entry["sha256"] and meta["task"] == "jpeg"
    assert {"preset", "size_multiple", "max_quality", "irae_version", "channels"} <= set(meta)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    size = out.stat().st_size
    r = irae("export", "irae-denoise-small", "-o", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.stat().st_size == size
    assert irae("export", "irae-denoise-small", "-o", out, "--overwrite").returncode == 0


def test_speed_times_both_backends_in_one_run(ort, tmp_path):
    r = irae("benchmark", "speed", "--arch", "tiny", "--size", "64", "--batch-size", "1", "--repeats", "1",
             "--warmup", "0", "--backend", "torch,onnxruntime", "--dtype", "fp32", "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert [(x["backend"], x["dtype"]) for x in s["results"]] == [("torch", "float32"), ("onnxruntime", "float32")]
    assert s["settings"]["backend"] == "torch, onnxruntime" and "x first row" in r.stdout


def test_auto_takes_onnxruntime_on_any_cpu_unless_torch_precision_or_compiling_is_asked_for(ort, monkeypatch):
    import irae_cli.backends as backends
    import irae_cli.environment as environment
    from irae_cli.backends import resolve_backend

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("IRAE_BACKEND", raising=False)
    for native_bf16 in (False, True):  # ONNX Runtime fp32 beat torch's bf16 path on bf16 CPUs too
        monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: native_bf16)
        assert resolve_backend("auto", cpu) == "onnxruntime" == resolve_backend("auto", cpu, "fp32")
        assert resolve_backend("auto", cpu, "bf16") == "torch" == resolve_backend("auto", cpu, "auto", "on")
        assert resolve_backend("auto", gpu) == "torch" == resolve_backend("torch", cpu)
    # IRAE_BACKEND sets what auto picks: torch on a CPU too, ONNX Runtime only where it can run the model
    monkeypatch.setenv("IRAE_BACKEND", "onnxruntime")
    assert resolve_backend("auto", cpu) == "onnxruntime" and resolve_backend("auto", gpu) == "torch"
    assert resolve_backend("auto", cpu, "bf16") == "torch" == resolve_backend("torch", cpu)
    monkeypatch.setenv("IRAE_BACKEND", "torch")
    assert resolve_backend("auto", cpu) == "torch" and resolve_backend("onnxruntime", cpu) == "onnxruntime"
    # without the extra, plain auto is torch (an explicit IRAE_BACKEND=onnxruntime is refused, as --backend is)
    monkeypatch.delenv("IRAE_BACKEND")
    monkeypatch.setattr(backends, "onnx_installed", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    monkeypatch.setenv("IRAE_BACKEND", "onnxruntime")
    with pytest.raises(IraeError, match="onnx extra"):
        resolve_backend("auto", cpu)
    monkeypatch.setenv("IRAE_BACKEND", "tensorrt")
    with pytest.raises(IraeError, match="IRAE_BACKEND"):
        resolve_backend("auto", cpu)


def test_the_speed_benchmark_times_torch_when_asked_to_compile_and_onnxruntime_otherwise(ort, monkeypatch):
    from irae_cli.benchmark.models import preset_model
    from irae_cli.benchmark.speed import ModelTimer

    monkeypatch.delenv("IRAE_BACKEND", raising=False)
    cpu = torch.device("cpu")
    timer = ModelTimer(preset_model("tiny"), "denoise", cpu, "auto", True, True, False, [], "auto")
    assert (timer.backend, timer.compiled) == ("torch", True)  # as restore --compile on would run it
    timer = ModelTimer(preset_model("tiny"), "denoise", cpu, "auto", False, True, False, [], "auto")
    assert (timer.backend, timer.compiled, timer.resolved) == ("onnxruntime", False, "float32")
