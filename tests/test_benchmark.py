"""`irae benchmark`: figures that equal independent computations, stable JSON, a real sheet, CPU speed runs."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irae_cli.benchmark import speed as speed_module
from irae_cli.benchmark.common import to_json
from irae_cli.benchmark.invertibility import fit_to_multiple, invertibility
from irae_cli.benchmark.models import load_model, parse_compare
from irae_cli.benchmark.quality import quality
from irae_cli.benchmark.sheet import LABEL_H, PAD, SheetRow, crop_box, render_sheet, sheet_size
from irae_cli.benchmark.speed import speed
from irae_cli.benchmark.tables import quality_table
from irae_cli.testset import make_test_set
from irae_cli.errors import IraeError
from irae_cli.fill import harmonic_fill
from irae_cli.model import create_model
from irae_cli.weights import save_weights
from util import irae as run_irae

DATA = Path(__file__).parent / "data"
RGB = ["astronaut_128.png", "chelsea_128.png", "coffee_128.png"]


def irae(*args, cwd=None):
    return run_irae(*args, cwd=cwd)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """photos/ (3 RGB + 1 gray), tiny IRAE weights A (denoise), cnn-tiny B (denoise), tiny IRAE I (inpaint)."""
    root = tmp_path_factory.mktemp("bench")
    photos = root / "photos"
    photos.mkdir()
    for name in [*RGB, "camera_128_gray.png"]:
        shutil.copy(DATA / name, photos / name)
    x = torch.from_numpy(np.asarray(Image.open(DATA / RGB[0]), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    a = create_model("tiny")
    a.initialize(x, x)
    save_weights(a, root / "A.safetensors", task="denoise")
    save_weights(create_model("cnn-tiny"), root / "B.safetensors", task="denoise")
    i = create_model("tiny")
    i.initialize(x, x)
    save_weights(i, root / "I.safetensors", task="inpaint", task_params={"fill": 0.5})
    return root


def u8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def numpy_y(a: np.ndarray) -> np.ndarray:
    return (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0 + 16.0


# --------------------------------------------------------------------------- the "Done when"

@pytest.mark.slow
def test_done_when_command(work, tmp_path):
    """One row per model, both files written, noisy-input figures equal an independent computation."""
    photos = tmp_path / "photos"
    shutil.copytree(work / "photos", photos)
    (photos / "camera_128_gray.png").unlink()  # RGB only, so the numpy reference stays three lines
    r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "25", photos, "--weights", work / "A.safetensors",
             "--compare", f"cnn={work / 'B.safetensors'}", "--json", tmp_path / "r.json", "--sheet",
             tmp_path / "s.png", "--classical", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "sigma25" in line]
    assert [line.split("│")[1].strip() for line in rows] == ["input", "A", "cnn"]

    result = json.loads((tmp_path / "r.json").read_text())
    assert list(result["models"]) == ["input", "A", "cnn"]
    assert result["models"]["cnn"]["arch"] == "cnn" and result["models"]["cnn"]["params"] > 0

    # Independent reference: the same set made by 'irae degrade' (same seed 0), scored with numpy.
    ref = make_test_set(photos, tmp_path / "set", task="denoise", sigma=[(25.0, 25.0)])
    expected = {}
    for rec in ref.records:
        clean, noisy = u8(tmp_path / "set" / rec["clean"]), u8(tmp_path / "set" / rec["degraded"])
        expected[rec["source"]] = (numpy_psnr(noisy, clean), numpy_psnr(numpy_y(noisy), numpy_y(clean)))
    (entry,) = [e for e in result["results"] if e["model"] == "input"]
    assert {p["image"] for p in entry["per_image"]} == set(RGB)
    for p in entry["per_image"]:
        assert p["psnr_rgb_u8"] == pytest.approx(expected[p["image"]][0], abs=1e-9)
        assert p["psnr_y601_u8"] == pytest.approx(expected[p["image"]][1], abs=1e-9)
    assert entry["metrics"]["psnr_rgb_u8"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-9)
    assert f"{entry['metrics']['psnr_rgb_u8']:.2f}" in rows[0]

    with Image.open(tmp_path / "s.png") as sheet:
        sheet.load()
        assert sheet.format == "PNG" and sheet.mode == "RGB"
        assert sheet.size == sheet_size(rows=3, columns=4, crop=128)  # degraded | A | cnn | clean
    assert result["settings"]["sheet"]["size"] == list(sheet_size(3, 4, 128))


# --------------------------------------------------------------------------- quality, in process

@pytest.fixture(scope="module")
def denoise_result(work):
    return quality(work / "photos", task="denoise", weights=str(work / "A.safetensors"),
                         compare=[("cnn", str(work / "B.safetensors"))], sigmas=[0, 25], device="cpu",
                         classical="none")


def test_quality_json_schema_is_stable(denoise_result):
    r = json.loads(to_json(denoise_result))
    assert set(r) == {"schema", "settings", "versions", "models", "results", "failures"}
    assert r["schema"] == "irae.benchmark.quality/1"
    assert set(r["settings"]) == {"task", "source", "source_kind", "seed", "levels", "metric_conventions", "device",
                                  "dtype", "tile", "batch_size", "n_images", "sheet", "classical", "backend"}
    assert r["settings"]["classical"] == {"rows": [], "missing": [], "install": None}
    assert set(r["versions"]) == {"irae", "python", "torch", "numpy", "pillow", "cuda", "cudnn", "platform", "device"}
    for m in r["models"].values():
        assert set(m) == {"weights", "sha256", "arch", "params"}
    keys = {"psnr_rgb_u8", "psnr_y601_u8", "ssim_rgb_u8", "ssim_y601_u8"}
    assert [(e["model"], e["level"]) for e in r["results"]] == [
        (m, lv) for m in ("input", "A", "cnn") for lv in ("sigma0", "sigma25")]
    for e in r["results"]:
        assert set(e) == {"model", "level", "n_images", "metrics", "n_inf", "per_image"}
        assert set(e["metrics"]) == keys and set(e["n_inf"]) == keys
        assert e["n_images"] == len(e["per_image"]) == 4
        for p in e["per_image"]:
            assert set(p) == {"image"} | keys
    assert r["settings"]["levels"]["sigma25"] == {"sigma": 25.0, "protocol": "clip"}
    assert r["models"]["A"]["sha256"] == load_model(r["models"]["A"]["weights"]).sha256


def test_quality_means_and_inf(denoise_result):
    """sigma 0: the input is the clean image, PSNR inf; it is counted, not averaged, and JSON stays valid."""
    by = {(e["model"], e["level"]): e for e in denoise_result["results"]}
    exact = by[("input", "sigma0")]
    assert all(p["psnr_rgb_u8"] == math.inf for p in exact["per_image"])
    assert exact["metrics"]["psnr_rgb_u8"] == math.inf and exact["n_inf"]["psnr_rgb_u8"] == 4
    assert exact["metrics"]["ssim_rgb_u8"] == pytest.approx(1.0)
    text = to_json(denoise_result)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["results"][0]["metrics"]["psnr_rgb_u8"] is None

    noisy = by[("cnn", "sigma25")]
    for k, v in noisy["metrics"].items():
        assert v == pytest.approx(np.mean([p[k] for p in noisy["per_image"]]), rel=1e-12)
        assert noisy["n_inf"][k] == 0

    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(quality_table(denoise_result))
    assert "inf" in console.export_text()


@pytest.mark.slow
def test_manifest_gives_the_same_figures_as_the_folder(work, tmp_path):
    """A folder benchmark degrades exactly as 'irae degrade' does for the same seed: equal per-image figures."""
    make_test_set(work / "photos", tmp_path / "set", task="inpaint", seed=7, masks=["box"])
    kw = dict(task="inpaint", weights=str(work / "I.safetensors"), device="cpu")
    from_set = quality(tmp_path / "set" / "manifest.jsonl", **kw)
    from_folder = quality(work / "photos", masks=["box"], seed=7, **kw)
    assert from_set["results"] == from_folder["results"]
    assert [e["model"] for e in from_set["results"]] == ["input", "harmonic-fill", "telea", "navier-stokes", "I"]
    first = from_set["results"][0]
    assert set(first["metrics"]) == {"psnr_rgb_u8", "psnr_y601_u8", "ssim_rgb_u8", "ssim_y601_u8",
                                     "psnr_hole_rgb_u8", "hole_ratio"}
    assert set(first["per_image"][0]) == {"image", "psnr_rgb_u8", "psnr_y601_u8", "ssim_rgb_u8", "ssim_y601_u8",
                                          "psnr_hole_rgb_u8", "hole_ratio"}
    fill = from_set["results"][1]
    assert fill["metrics"]["psnr_hole_rgb_u8"] > first["metrics"]["psnr_hole_rgb_u8"] + 3  # beats a grey hole
    assert from_set["settings"]["source_kind"] == "manifest" and from_set["settings"]["seed"] == 7


def test_float_protocol_input_row_is_the_float_input(work, tmp_path):
    """--noise-protocol float: the input row scores the unclipped float image the models restore, not its 8-bit copy."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / RGB[0], photos / RGB[0])
    kw = dict(task="denoise", weights=str(work / "A.safetensors"), device="cpu", classical="none")
    from_folder = quality(photos, sigmas=[25], noise_protocol="float", **kw)
    ref = make_test_set(photos, tmp_path / "set", task="denoise", sigma=[(25.0, 25.0)], noise_protocol="float")
    (rec,) = ref.records
    noisy = np.load(tmp_path / "set" / rec["degraded"]).astype(np.float64).transpose(1, 2, 0) * 255
    clean = u8(tmp_path / "set" / rec["clean"])
    assert noisy.min() < 0 and noisy.max() > 255  # unclipped: rounding to 8 bits would change the figure
    from_set = quality(tmp_path / "set", **kw)
    for r in (from_folder, from_set):
        (entry,) = [e for e in r["results"] if e["model"] == "input"]
        (p,) = entry["per_image"]
        assert p["psnr_rgb_u8"] == pytest.approx(numpy_psnr(noisy, clean), abs=1e-9)
        assert p["psnr_y601_u8"] == pytest.approx(numpy_psnr(numpy_y(noisy), numpy_y(clean)), abs=1e-9)
    assert from_set["results"] == from_folder["results"]


def test_quality_usage_errors(work, tmp_path):
    with pytest.raises(IraeError, match="reserved or used twice"):
        quality(work / "photos", task="denoise", weights=str(work / "A.safetensors"),
                      compare=[("input", str(work / "B.safetensors"))], sigmas=[25], device="cpu")
    with pytest.raises(IraeError, match="not 'jpeg'"):
        quality(work / "photos", task="jpeg", weights=str(work / "A.safetensors"), device="cpu")
    with pytest.raises(IraeError, match="NAME=WEIGHTS"):
        parse_compare(["B.safetensors"])


@pytest.mark.slow
def test_bad_image_is_reported_and_the_rest_scored(work, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / RGB[0], photos / RGB[0])
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "r.json").write_text("mine")
    r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "25", photos, "--weights",
             work / "A.safetensors", "--json", tmp_path / "r.json")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (tmp_path / "r.json").read_text() == "mine"
    r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "25", photos, "--weights",
             work / "A.safetensors", "--json", tmp_path / "r.json", "--overwrite", "--classical", "nlm")
    assert r.returncode == 1
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert [f["image"] for f in result["failures"]] == ["broken.png"]
    assert result["settings"]["n_images"] == 1


# --------------------------------------------------------------------------- sheet and fill

def test_sheet_layout_and_worst_crop():
    err = torch.zeros(200, 300)
    err[150:190, 10:50] = 1.0
    top, left = crop_box(err, 64, "worst")
    assert top <= 150 and top + 64 >= 190 and left <= 10 and left + 64 >= 50
    assert crop_box(err, 64, "centre") == (68, 118)

    big = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(0))
    small_gray = torch.rand(1, 40, 50, generator=torch.Generator().manual_seed(1))
    rows = [SheetRow("a.png", big, big, {"m1": big, "m2": big}, {"m1": "PSNR 30.00 dB"}, box=(top, left)),
            SheetRow("a-very-long-image-name-that-cannot-fit.png", small_gray, small_gray,
                     {"m1": small_gray, "m2": small_gray}, level="sigma25")]
    img = render_sheet(rows, ["m1", "m2"], crop=64)
    assert img.size == sheet_size(2, 4, 64) == (4 * 64 + 5 * PAD, 2 * (64 + LABEL_H) + 3 * PAD)
    arr = np.asarray(img)
    y0, x0 = PAD + LABEL_H, PAD
    expected = np.round(big[:, top:top + 64, left:left + 64].numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(arr[y0:y0 + 64, x0:x0 + 64], expected)  # pixel-exact crop, no resampling


def test_harmonic_fill():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2, 3, 64, 64).contiguous()
    mask = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    mask[:, :, 10:50, 20:60] = True
    out = harmonic_fill(ramp, mask)
    assert torch.equal(out[~mask.expand_as(out)], ramp[~mask.expand_as(ramp)])
    assert (out - ramp).abs().max() < 1e-4  # a linear ramp is harmonic: reproduced inside the hole
    assert torch.equal(harmonic_fill(ramp, torch.zeros_like(mask)), ramp)


# --------------------------------------------------------------------------- speed

@pytest.mark.slow
def test_speed_cpu_tiny(work, tmp_path):
    r = irae("benchmark", "speed", "--weights", work / "B.safetensors", "--size", "64", "--batch-size", "2",
             "--repeats", "3", "--warmup", "1", "--device", "cpu", "--json", tmp_path / "sp.json")
    assert r.returncode == 0, r.stderr
    assert "MP/s" in r.stdout
    s = json.loads((tmp_path / "sp.json").read_text())
    assert set(s) == {"schema", "settings", "versions", "model", "results", "notes"}
    assert s["schema"] == "irae.benchmark.speed/1"
    assert set(s["settings"]) == {"arch", "weights", "task", "size", "batch_size", "dtype", "device", "compile",
                                  "channels_last", "warmup", "folder", "naive", "cpu_threads", "repeats", "backend"}
    assert set(s["model"]) == {"weights", "sha256", "arch", "params", "mac_per_pixel", "size_multiple"}
    # cnn-tiny: 3->16, 3 x 16->16, 16->3 convolutions of 3x3, counted by hand.
    assert s["model"]["mac_per_pixel"] == 3 * 16 * 9 + 3 * 16 * 16 * 9 + 16 * 3 * 9
    (m,) = s["results"]
    assert set(m) == {"mode", "images", "megapixels", "repeats", "median_s", "p90_s", "mp_per_s", "images_per_s",
                      "peak_memory_bytes", "peak_memory_source", "times_s", "batch_size", "dtype", "compile",
                      "folded", "backend"}
    assert m["mode"] == "model" and m["repeats"] == len(m["times_s"]) == 3 and m["images"] == 2
    assert m["dtype"] == "float32" and m["compile"] is False  # a CNN runs fp32 on the CPU's auto path
    assert m["p90_s"] >= m["median_s"] > 0
    assert m["mp_per_s"] == pytest.approx(2 * 64 * 64 / 1e6 / m["median_s"])
    assert s["versions"]["torch"] == torch.__version__ and s["versions"]["device"].startswith("cpu")


def test_speed_folder_end_to_end_and_naive(work):
    s = speed(arch="tiny", folder=work / "photos", naive=True, device="cpu", warmup=0)
    assert [r["mode"] for r in s["results"]] == ["end-to-end", "naive"]
    for r in s["results"]:
        assert r["images"] == 4 and r["megapixels"] == pytest.approx(4 * 128 * 128 / 1e6)
        assert r["median_s"] > 0
    assert s["model"]["mac_per_pixel"] > 0 and s["model"]["params"] > 0


@pytest.mark.slow
def test_speed_folder_runs_restore_with_the_given_io_threads(work, tmp_path, monkeypatch):
    import irae_cli.restore as pl

    seen, real_restore = [], pl.restore
    def restore(input, output, opts, **kw):
        seen.append(opts.workers)
        return real_restore(input, output, opts, **kw)

    monkeypatch.setattr(pl, "restore", restore)
    s = speed(arch="tiny", folder=work / "photos", device="cpu", warmup=0, workers=3)
    assert seen == [3] and s["settings"]["io_threads"] == 3
    assert speed(arch="tiny", folder=work / "photos", device="cpu", warmup=0)["settings"]["io_threads"] >= 1
    bad = irae("benchmark", "speed", "--arch", "tiny", "-j", "2", "--json", tmp_path / "s.json")
    assert bad.returncode == 2 and "--workers" in bad.stderr and not (tmp_path / "s.json").exists()


def test_speed_folder_is_like_for_like(work, tmp_path, monkeypatch):
    """JPEG in: both runs write PNG at the same level and run at the same precision (bf16 coupling nets)."""
    import irae_cli.restore as pl
    from irae_cli.model.flows import CouplingNet

    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for name in RGB:
        Image.open(DATA / name).save(jpegs / (Path(name).stem + ".jpg"), quality=80)
    written, autocast = [], []
    real_restore, real_naive, real_body = pl.restore, speed_module._naive_loop, CouplingNet._body

    def restore(input, output, opts, **kw):
        summary = real_restore(input, output, opts, **kw)
        written.append(("end-to-end", sorted(p.suffix for p in Path(output).rglob("*") if p.is_file())))
        return summary

    def naive(sources, dest, *args):
        autocast.clear()  # the ActNorm initialisation of the preset ran its coupling nets in fp32
        real_naive(sources, dest, *args)
        written.append(("naive", sorted(p.suffix for p in Path(dest).rglob("*") if p.is_file())))

    def body(self, x, *args, **kwargs):  # the unfolded coupling nets: the naive loop's (restore runs folded)
        autocast.append(torch.is_autocast_enabled("cpu"))
        return real_body(self, x, *args, **kwargs)

    monkeypatch.setattr(pl, "restore", restore)
    monkeypatch.setattr(speed_module, "_naive_loop", naive)
    monkeypatch.setattr(CouplingNet, "_body", body)
    monkeypatch.setattr(speed_module, "macs_per_pixel", lambda *a: 1.0)  # its fp32 forward is not a timed run
    s = speed(arch="tiny", folder=jpegs, naive=True, device="cpu", dtype="bf16", warmup=0)
    e2e, nv = s["results"]
    assert written == [("end-to-end", [".png"] * 3), ("naive", [".png"] * 3)]
    for key in ("dtype", "low_precision_scope", "conv_tf32", "output"):
        assert e2e[key] == nv[key], key
    assert nv["dtype"] == "bfloat16" and nv["output"] == "PNG level 1" and nv["conv_tf32"] is None
    assert nv["low_precision_scope"] == "coupling nets"
    assert "bfloat16" in nv["pipeline"] and "level 1" in nv["pipeline"]
    assert autocast and all(autocast)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_speed_folder_naive_fp32_is_ieee(work):
    s = speed(arch="tiny", folder=work / "photos", naive=True, device="cuda", dtype="fp32", warmup=0)
    assert [r["conv_tf32"] for r in s["results"]] == [False, False]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_speed_cuda_bf16_compile():
    s = speed(arch="tiny", size=256, batch_size=2, dtype="bf16", device="cuda", compile=True, repeats=3)
    (m,) = s["results"]
    assert m["peak_memory_source"] == "cuda max_memory_allocated" and m["peak_memory_bytes"] > 0


# --------------------------------------------------------------------------- invertibility

@pytest.mark.slow
def test_invertibility_tiny(work, tmp_path):
    r = invertibility(weights=str(work / "A.safetensors"), images=work / "photos", device="cpu")
    assert set(r) == {"schema", "settings", "versions", "model", "condition_numbers", "results", "summary",
                      "failures"}
    assert len(r["results"]) == 4 and r["summary"]["passed"]
    assert r["settings"]["criterion"] == "max error in 8-bit levels" and r["settings"]["tolerance"] == 0.5
    assert r["summary"]["max_rel_error"] < 1e-5
    assert r["summary"]["max_error_levels"] < 0.5 and r["summary"]["exact_u8_fraction"] == 1.0
    for e in r["results"]:
        assert set(e) == {"image", "shape", "rel_error", "max_abs_error", "max_error_levels", "exact_u8_fraction"}
        assert e["rel_error"] < 1e-5
        assert e["max_error_levels"] == pytest.approx(255 * e["max_abs_error"])
    assert r["condition_numbers"]["max"] == pytest.approx(1.0, abs=1e-6)

    at = invertibility(arch="tiny", images=DATA / RGB[0], dtype="fp64", size=150, device="cpu")
    assert at["results"][0]["shape"] == [3, 152, 152] and at["summary"]["max_rel_error"] < 1e-12

    r = irae("benchmark", "invertibility", "--weights", work / "B.safetensors", work / "photos", "--device", "cpu")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not invertible" in r.stderr


def test_fit_to_multiple_crops_to_real_pixels():
    x = torch.arange(3 * 10 * 13, dtype=torch.float32).view(3, 10, 13)
    y = fit_to_multiple(x, 4)
    assert y.shape == (3, 8, 12) and torch.equal(y, x[:, 1:9, 0:12])


# --------------------------------------------------------------------------- classical rows

@pytest.mark.slow
def test_classical_denoise_rows_beat_the_input(work, tmp_path):
    pytest.importorskip("skimage")
    wanted = "nlm,cbm3d" if importlib.util.find_spec("bm3d") else "nlm"
    r = quality(work / "photos" / RGB[0], task="denoise", sigmas=[25], weights=str(work / "A.safetensors"),
                      device="cpu", classical=wanted)
    rows = {e["model"]: e for e in r["results"]}
    assert list(rows)[:1 + len(wanted.split(","))] == ["input", *[m for m in ("cbm3d", "nlm") if m in wanted]]
    for name in wanted.split(","):
        assert r["models"][name]["classical"] and r["models"][name]["licence"]
        assert rows[name]["metrics"]["psnr_rgb_u8"] > rows["input"]["metrics"]["psnr_rgb_u8"] + 3
    assert r["settings"]["classical"]["rows"] == [m for m in ("cbm3d", "nlm") if m in wanted]


def test_classical_inpaint_rows_keep_known_pixels(work):
    pytest.importorskip("cv2")
    r = quality(work / "photos" / RGB[1], task="inpaint", masks=["box"], weights=str(work / "I.safetensors"),
                      device="cpu")
    rows = {e["model"]: e for e in r["results"]}
    for name in ("harmonic-fill", "telea", "navier-stokes"):
        assert rows[name]["metrics"]["psnr_hole_rgb_u8"] > rows["input"]["metrics"]["psnr_hole_rgb_u8"] + 3
    import irae_cli.classical as classical

    x = torch.rand(3, 32, 32)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, 8:20, 10:24] = True
    out = classical.METHODS[3].run(x, {}, mask)
    assert torch.equal(out[:, ~mask[0]], x[:, ~mask[0]])


@pytest.mark.slow
def test_missing_classical_package_is_one_note_and_bad_name_is_usage_error(work, monkeypatch, tmp_path):
    import irae_cli.classical as classical

    monkeypatch.setattr(classical.Classical, "available", property(lambda self: self.module is None))
    r = quality(work / "photos" / RGB[0], task="inpaint", masks=["box"], weights=str(work / "I.safetensors"),
                      device="cpu")
    assert [e["model"] for e in r["results"]] == ["input", "harmonic-fill", "I"]
    assert r["settings"]["classical"] == {"rows": ["harmonic-fill"], "missing": ["telea", "navier-stokes"],
                                         "install": "pip install 'irae[classical]'"}
    bad = irae("benchmark", "quality", "--task", "denoise", work / "photos", "--weights", work / "A.safetensors",
               "--classical", "bm4d", "--device", "cpu")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cbm3d, nlm" in bad.stderr


@pytest.mark.slow
def test_classical_rows_in_worker_processes_give_the_same_report(work, tmp_path):
    pytest.importorskip("cv2")
    runs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"r{workers}.json"
        r = irae("benchmark", "quality", "--task", "inpaint", work / "photos", "--weights", work / "I.safetensors",
                 "--mask", "box,strokes", "--device", "cpu", "--workers", workers, "--json", out)
        assert r.returncode == 0, r.stderr
        runs[workers] = json.loads(out.read_text())
    assert runs["1"]["results"] == runs["2"]["results"] and runs["1"]["models"] == runs["2"]["models"]
    assert list(runs["2"]["models"])[:4] == ["input", "harmonic-fill", "telea", "navier-stokes"]
    assert runs["2"]["settings"]["n_images"] == 4


@pytest.mark.parametrize("workers", ["two", "-1"])
def test_bad_workers_is_a_usage_error_before_any_work(work, tmp_path, workers):
    r = irae("benchmark", "quality", "--task", "denoise", work / "photos", "--weights", work / "A.safetensors",
             "-j", workers, "--json", tmp_path / "r.json")
    assert r.returncode == 2 and "--workers" in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_self_ensemble_rows_follow_each_network(work):
    r = quality(work / "photos" / RGB[0], task="denoise", sigmas=[25], weights=str(work / "A.safetensors"),
                compare=[("B", str(work / "B.safetensors"))], device="cpu", classical="none", self_ensemble=True)
    assert list(r["models"]) == ["input", "A", "A x8", "B", "B x8"]
    assert r["models"]["A x8"]["self_ensemble"] == 8 and r["models"]["A x8"]["sha256"] == r["models"]["A"]["sha256"]
    rows = {e["model"]: e["metrics"]["psnr_rgb_u8"] for e in r["results"]}
    assert rows["A x8"] != rows["A"] and rows["B x8"] != rows["B"]
    with pytest.raises(IraeError, match="self-ensemble row"):
        quality(work / "photos" / RGB[0], task="denoise", sigmas=[25], weights=str(work / "A.safetensors"),
                compare=[("A x8", str(work / "B.safetensors"))], device="cpu", classical="none", self_ensemble=True)


def test_speed_baseline_row_times_eager_fp32_in_the_same_run(work):
    s = speed(weights=str(work / "A.safetensors"), size=64, batch_size=1, repeats=2, warmup=1, device="cpu",
                    dtype="bf16", baseline=True)
    base, model = s["results"]
    assert base["mode"].startswith("baseline") and base["dtype"] == "float32" and not base["folded"]
    assert model["mode"] == "model" and model["dtype"] == "bfloat16 (coupling nets)" and model["folded"]
    assert s["settings"]["dtype"] == model["dtype"]


def test_partial_compile_is_noted(work, monkeypatch):
    from torch._dynamo.utils import counters

    def fake_compile(model, **kwargs):
        def run(x):
            counters["graph_break"]["emulated break"] += 1  # what dynamo counts when it splits a graph
            return model(x)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    s = speed(weights=str(work / "A.safetensors"), size=32, batch_size=1, repeats=1, warmup=0, device="cpu",
                    dtype="fp32", compile=True)
    assert s["results"][0]["compile"] is True
    assert any(n.startswith("torch.compile was partial: 1 graph break") for n in s["notes"])


def test_jpeg_scores_what_restore_writes_above_the_weights_quality_limit(work, tmp_path):
    """Weights that help only up to quality 50 keep a quality-90 file as it is: their row is the input's there,
    for a folder and for a test set (whose quality is read back from the files' tables) alike."""
    from irae_cli.weights import save_weights

    m = create_model("cnn-tiny")
    save_weights(m, tmp_path / "J.safetensors", task="jpeg", task_params={"max_quality": 50})
    kw = dict(task="jpeg", weights=str(tmp_path / "J.safetensors"), device="cpu", classical="none")
    make_test_set(work / "photos", tmp_path / "set", task="jpeg", quality=[20, 90])
    for r in (quality(work / "photos", qualities=[20, 90], **kw), quality(tmp_path / "set", **kw)):
        by = {(e["model"], e["level"]): e["metrics"]["psnr_rgb_u8"] for e in r["results"]}
        assert by[("J", "q90")] == by[("input", "q90")]
        assert by[("J", "q20")] != by[("input", "q20")]


def test_quality_limit_stops_where_either_psnr_falls_below_the_input(tmp_path):
    """scripts/jpeg_quality_limit.py: a model that gains colour but loses luma at quality 90 stops at 85, and
    the limit lands in the weights it writes."""
    from irae_cli.weights import load_weights, save_weights

    gains = {20: (1.0, 0.8), 85: (0.5, 0.2), 90: (0.03, -0.4), 95: (0.5, 0.5)}  # (rgb, y) in dB over the input
    results = []
    for q, (rgb, y) in gains.items():
        results.append({"model": "input", "level": f"q{q}", "metrics": {"psnr_rgb_u8": 30.0, "psnr_y601_u8": 32.0}})
        results.append({"model": "J", "level": f"q{q}",
                        "metrics": {"psnr_rgb_u8": 30.0 + rgb, "psnr_y601_u8": 32.0 + y}})
    bench = {"settings": {"levels": {f"q{q}": {"quality": q} for q in gains}}, "results": results}
    (tmp_path / "ladder.json").write_text(json.dumps(bench))
    save_weights(create_model("cnn-tiny"), tmp_path / "J.safetensors", task="jpeg")
    script = Path(__file__).resolve().parent.parent / "scripts" / "jpeg_quality_limit.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "J.safetensors"), str(tmp_path / "ladder.json"),
                        "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "max_quality 85" in r.stdout and "psnr_y601_u8 -0.400" in r.stdout
    assert load_weights(tmp_path / "out.safetensors", device="cpu").task_params["max_quality"] == 85
