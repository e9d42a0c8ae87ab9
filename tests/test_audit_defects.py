"""Defects a reliability audit found: damaged weights metadata, a torchrun dry run's teardown, JPEGs whose
header claims far more than their data holds, two --skip-existing runs sharing one output and report, and
Pillow's own EXIF warnings.  Real files, real ``irae`` processes."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from util import ONE_THREAD, ROOT, irae

JPEG_WEIGHTS = ROOT / "weights" / "irae-jpeg-medium.safetensors"


def noise_image(path: Path, size: int, seed: int, **save) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, **save)
    return path


def weights_with_max_quality(dst: Path, value) -> Path:
    with safe_open(str(JPEG_WEIGHTS), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["task_params"] = json.dumps({"max_quality": value})
    save_file(state, str(dst), meta)
    return dst


@pytest.mark.parametrize("value", ["80", "abc", [80], -1, True])
def test_jpeg_weights_with_a_damaged_max_quality_are_refused_at_load(tmp_path, value):
    src = tmp_path / "in"
    src.mkdir()
    noise_image(src / "q30.jpg", 64, 1, quality=30)
    weights = weights_with_max_quality(tmp_path / "w.safetensors", value)
    report = tmp_path / "r.jsonl"
    r = irae("restore", "--task", "jpeg", src, tmp_path / "out", "--weights", weights, "--report", report)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(weights) in lines[0] and "max_quality" in lines[0] and "1-100" in lines[0]
    assert not (tmp_path / "out").exists() and not report.exists()


@pytest.mark.slow
def test_jpeg_benchmark_refuses_a_damaged_max_quality(tmp_path):
    weights = weights_with_max_quality(tmp_path / "w.safetensors", "80")
    images = tmp_path / "images"
    images.mkdir()
    noise_image(images / "a.png", 64, 2)
    r = irae("benchmark", "quality", images, "--task", "jpeg", "--weights", weights, "--quality", "30",
             "--classical", "none")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "max_quality" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.torchrun
def test_torchrun_dry_run_ends_every_process_cleanly(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        noise_image(src / f"n{i}.png", 256, i)
    (src / "empty.png").write_bytes(b"")
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "irae_cli",
           "restore", "--task", "denoise", "--device", "cpu", "--weights", "irae-denoise-small", str(src),
           str(tmp_path / "out"), "--dry-run"]
    for _ in range(3):  # the abort was a race: it showed in two runs of three
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "terminate called" not in r.stderr and "SIGABRT" not in r.stderr
        assert "plan: restore 6 image(s)" in r.stdout
    assert not (tmp_path / "out").exists()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 128x128 JPEG (about 2 KB) whose frame header is edited to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    noise_image(buf, 128, 3, format="JPEG", quality=10)
    data = buf.getvalue()
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


@pytest.mark.parametrize("memory_limit", ["1G", "1T"])
def test_a_jpeg_whose_header_claims_far_more_than_its_data_fails_as_damaged(tmp_path, memory_limit):
    """Whatever memory is free: 177 MP would not fit in 1 GB (the memory check refuses first and the damage is
    what it names) and would in a terabyte's cap on a big machine (the decoder's own check names it)."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "claims.jpg").write_bytes(jpeg_claiming(13300, 13300))
    noise_image(src / "good.jpg", 64, 4, quality=40)  # a JPEG: the default model is told its quality
    report = tmp_path / "r.jsonl"
    r = irae("restore", "--task", "jpeg", src, tmp_path / "out", "--report", report,
             env={"IRAE_MEMORY_LIMIT": memory_limit}, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "claims.jpg: damaged JPEG" in r.stderr and "13300x13300" in r.stderr, r.stderr
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "claims.png").exists()
    status = {Path(rec["input"]).name: rec["status"] for rec in map(json.loads, report.read_text().splitlines())}
    assert status == {"claims.jpg": "failed", "good.jpg": "ok"}


def test_the_damage_is_found_before_any_decoding(tmp_path, monkeypatch):
    """"Fast" without a clock: the verdict comes from the markers, and the pixels are never decoded."""
    from irae_cli.errors import ImageError
    from irae_cli.imageio import read_image
    from irae_cli.restore import items

    path = tmp_path / "claims.jpg"
    path.write_bytes(jpeg_claiming(13300, 13300))

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(ImageError, match="damaged JPEG"):
        read_image(path)
    monkeypatch.setattr(items, "available_bytes", lambda: 2**30)  # 177 MP cannot fit: the memory check runs
    with pytest.raises(ImageError, match="damaged JPEG"):
        items._refuse_too_large(path)


def test_an_image_whose_restore_would_not_fit_in_memory_is_refused_before_decoding(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    y, x = np.mgrid[0:1024, 0:1024]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(src / "large.png")
    noise_image(src / "small.png", 64, 5)
    # 1 MP needs about 40 MB to restore: more than a 16 MB cap, while the 64x64 image fits.
    r = irae("restore", "--task", "denoise", "--weights", "irae-denoise-small", src, tmp_path / "out",
             env={"IRAE_MEMORY_LIMIT": "16M"}, timeout=120)
    assert r.returncode == 1, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "large.png" in ln)
    assert "1.0 MP needs about" in line and "free" in line, r.stderr
    assert (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "large.png").exists()


@pytest.mark.slow
def test_two_skip_existing_runs_into_one_folder_and_report_lose_nothing(tmp_path):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.jsonl"
    src.mkdir()
    for i in range(40):
        noise_image(src / f"i{i:02d}.png", 64, 10 + i)
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "irae_cli", "restore", "--task", "denoise", "--weights", "irae-denoise-small",
           "--skip-existing", "--report", str(report), str(src), str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    first_err = first.communicate(timeout=240)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second.stderr
    assert "refusing to overwrite" not in first_err + second.stderr
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(records) == 80  # 40 lines from each run, none lost or mixed
    per_input = Counter((Path(r["input"]).name, r["status"]) for r in records)
    assert {name for name, status in per_input if status == "ok"} == {f"i{i:02d}.png" for i in range(40)}
    assert all(status in ("ok", "skipped") for _, status in per_input)
    assert all(n == 1 for (_, status), n in per_input.items() if status == "ok")
    assert sorted(p.name for p in out.iterdir()) == [f"i{i:02d}.png" for i in range(40)]


def jpeg_with_garbage_exif(path: Path) -> Path:
    """A JPEG whose EXIF block announces more entries than it holds."""
    buf = io.BytesIO()
    noise_image(buf, 64, 6, format="JPEG", quality=80)
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 5) + struct.pack("<HHII", 0x010F, 2, 20, 200)
    exif = b"Exif\x00\x00" + tiff
    data = buf.getvalue()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
    return path


@pytest.mark.parametrize("dry_run", [True, False])
def test_pillows_exif_warning_becomes_one_irae_warning_naming_the_file(tmp_path, dry_run):
    src = tmp_path / "in"
    src.mkdir()
    bad = jpeg_with_garbage_exif(src / "bad.jpg")
    r = irae("restore", "--task", "jpeg", src, tmp_path / "out", *(["--dry-run"] if dry_run else []))
    assert r.returncode == 0, r.stderr
    assert "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("irae: warning:")]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "EXIF" in warnings[0], r.stderr


def test_degrade_names_the_file_with_garbage_exif(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    bad = jpeg_with_garbage_exif(src / "bad.jpg")
    r = irae("degrade", "--task", "denoise", src, tmp_path / "set")
    assert "UserWarning" not in r.stderr, r.stderr
    assert any(ln.startswith("irae: warning:") and str(bad) in ln for ln in r.stderr.splitlines()), r.stderr
