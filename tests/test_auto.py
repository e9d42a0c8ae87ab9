"""`irae restore --task auto`: routes, the byte copy, the report, the dry run; the mixed set and its benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from irae_cli.degradations import jpeg_bytes
from irae_cli.imageio import read_image
from irae_cli.pixels import quantize_u8, to_pil
from irae_cli.routing import right_route, route
from irae_cli.weights import default_weights_for, read_task_params
from util import irae

DATA = Path(__file__).parent / "data"
# the quality above which the shipped JPEG model leaves a file alone (it moves when new weights ship)
MAX_Q = read_task_params(default_weights_for("jpeg"))["max_quality"]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder as users have them: a noisy PNG, a low- and a high-quality JPEG, a clean PNG, a clean gray one."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    x, _ = read_image(DATA / "astronaut_128.png")
    g = torch.Generator().manual_seed(0)
    to_pil(quantize_u8(x + torch.randn(x.shape, generator=g) * 25 / 255)).save(folder / "noisy.png")
    (folder / "q20.jpg").write_bytes(jpeg_bytes(quantize_u8(x), 20, "4:2:0", None))
    (folder / "sub" / "q95.jpg").write_bytes(jpeg_bytes(quantize_u8(x), 95, "4:2:0", None))
    shutil.copy(DATA / "coffee_128.png", folder / "clean.png")
    shutil.copy(DATA / "camera_128_gray.png", folder / "sub" / "gray.png")
    return folder


ROUTES = {"noisy.png": "denoise", "q20.jpg": "jpeg", "sub/q95.jpg": "copied", "clean.png": "copied",
          "sub/gray.png": "copied"}


def test_each_file_goes_its_route_and_clean_ones_are_copied_byte_for_byte(mixed, tmp_path):
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    r = irae("restore", "--task", "auto", mixed, out, "--report", report)
    assert r.returncode == 0, r.stderr
    lines = {Path(d["input"]).relative_to(mixed).as_posix(): d
             for d in map(json.loads, report.read_text().splitlines())}
    assert {k: d["route"] for k, d in lines.items()} == ROUTES
    assert lines["q20.jpg"]["route_reason"] == "quality 20 -> jpeg" and lines["q20.jpg"]["output"].endswith(".png")
    assert lines["noisy.png"]["route_reason"].startswith("sigma ~ 2") and lines["noisy.png"]["weights_sha256"]
    assert lines["sub/q95.jpg"]["route_reason"] == f"quality 95 above {MAX_Q} -> copied"
    assert lines["clean.png"]["weights_sha256"] is None and lines["clean.png"]["sigma_estimate"] < 4
    for rel in ("sub/q95.jpg", "clean.png", "sub/gray.png"):
        assert (out / rel).read_bytes() == (mixed / rel).read_bytes()
    assert (out / "q20.png").is_file() and (out / "noisy.png").is_file() and not (out / "q20.jpg").exists()
    assert (out / "noisy.png").read_bytes() != (mixed / "noisy.png").read_bytes()
    assert "restored 2 (1 denoise, 1 jpeg), copied 3, skipped 0, failed 0" in r.stderr


def test_dry_run_lists_routes_and_writes_nothing(mixed, tmp_path):
    out = tmp_path / "out"
    r = irae("restore", "--task", "auto", mixed, out, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    assert f"JPEG quality <= {MAX_Q} -> jpeg; sigma >= 4 -> denoise; else copied" in r.stdout
    listed = {line.split(" -> ")[0].strip(): line for line in r.stdout.splitlines() if line.startswith(f"  {mixed}")}
    assert len(listed) == 5
    assert listed[str(mixed / "q20.jpg")].endswith(f"{out / 'q20.png'}  [quality 20 -> jpeg]")
    assert "-> denoise]" in listed[str(mixed / "noisy.png")]
    assert "clean (sigma ~ " in listed[str(mixed / "clean.png")] and "-> copied]" in listed[str(mixed / "clean.png")]


def test_only_the_models_needed_are_loaded(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "coffee_128.png", folder / "clean.png")
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    r = irae("restore", "--task", "auto", folder, out, "--report", report)
    assert r.returncode == 0, r.stderr
    line = json.loads(report.read_text())
    assert line["route"] == "copied" and line["dtype"] is None  # no model was loaded to copy a file
    assert "restored 0, copied 1" in r.stderr


def test_a_copy_never_replaces_an_existing_output(mixed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clean.png").write_bytes(b"mine")
    r = irae("restore", "--task", "auto", mixed, out)
    assert r.returncode == 2 and "already exist" in r.stderr
    assert (out / "clean.png").read_bytes() == b"mine"
    r = irae("restore", "--task", "auto", mixed, out, "--skip-existing", "--include", "clean.png")
    assert r.returncode == 0 and (out / "clean.png").read_bytes() == b"mine"


@pytest.mark.parametrize("args, words", [
    (["--weights", "irae-denoise-medium"], "--weights names the weights of one task"),
    (["--mask-from", "alpha"], "never inpaints"),
    (["--format", "png"], "does not go with --task auto"),
])
def test_usage_errors_before_any_work(mixed, tmp_path, args, words):
    r = irae("restore", "--task", "auto", mixed, tmp_path / "out", *args)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_route_rule_and_its_truth():
    assert route(80, 80, 30.0).name == "jpeg"
    assert route(81, 80, 30.0).name == "copied"  # a JPEG above max_quality is kept as it is, noisy or not
    assert route(None, 80, 4.0).name == "denoise" and route(None, 80, 3.9).name == "copied"
    assert right_route("denoise", {"sigma": 3.0}, 80) == "copied"  # below the threshold the input is better
    assert right_route("jpeg", {"quality": 90}, 80) == "copied" and right_route("none", {}, 80) == "copied"


def test_mixed_set_and_its_benchmark(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("astronaut_128.png", "coffee_128.png"):
        shutil.copy(DATA / name, clean / name)
    r = irae("degrade", "--task", "auto", clean, tmp_path / "set", "--sigma", "15", "--quality", "20,95", "-j", "1")
    assert r.returncode == 0, r.stderr
    manifest = [json.loads(line) for line in (tmp_path / "set" / "manifest.jsonl").read_text().splitlines()]
    assert sorted({(m["level"], m["task"]) for m in manifest}) == [
        ("clean", "none"), ("q20", "jpeg"), ("q95", "jpeg"), ("sigma15", "denoise")]
    assert all(m["degraded"] == m["clean"] for m in manifest if m["task"] == "none")
    r = irae("benchmark", "quality", "--task", "auto", tmp_path / "set", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    overall = next(x for x in result["routing"] if x["level"] == "all")
    assert overall["n_images"] == 8 and overall["right"] == 1.0
    psnr = {x["model"]: x["metrics"]["psnr_rgb_u8"] for x in result["results"] if x["level"] == "all degraded"}
    assert psnr["auto"] >= max(psnr["denoise"], psnr["jpeg"], psnr["input"])
    assert "routed right" in r.stdout
    r = irae("benchmark", "quality", "--task", "auto", tmp_path / "set", "--sigma", "5")
    assert r.returncode == 2 and "--sigma cannot be used with --task auto" in r.stderr
