"""`irae benchmark`'s files, as a user meets them: a folder to time that holds a bomb, report destinations that
cannot be written (refused before any work), and a sheet that cannot be saved (the JSON report is kept)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch

from irae_cli.benchmark.quality import quality
from irae_cli.imageio import read_image
from irae_cli.model import create_model
from irae_cli.weights import save_weights

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import fill_disk, one_error_line, small_disk, unprivileged  # noqa: E402
from util import irae as run_irae

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a shared machine: oversubscribed torch threads are many times slower


def irae(*args, prefix=()):
    return run_irae(*args, prefix=prefix)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """photos/ (two RGB photos) and tiny IRAE denoise weights w.safetensors."""
    root = tmp_path_factory.mktemp("bench-files")
    (root / "photos").mkdir()
    for name in ("astronaut_128.png", "coffee_128.png"):
        shutil.copy(DATA / name, root / "photos" / name)
    x = torch.stack([read_image(DATA / "astronaut_128.png")[0]])
    model = create_model("tiny")
    model.initialize(x, x)
    save_weights(model, root / "w.safetensors", task="denoise")
    return root


def png_header_claiming(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side pixels (a decompression bomb's header; a few bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def command(kind: str, work: Path) -> list:
    return {"quality": ["benchmark", "quality", "--task", "denoise", "--sigma", "25", work / "photos", "--weights",
                        work / "w.safetensors", "--classical", "none", "--device", "cpu"],
            "speed": ["benchmark", "speed", "--weights", work / "w.safetensors", "--size", "32", "--repeats", "1",
                      "--warmup", "0", "--device", "cpu"],
            "invertibility": ["benchmark", "invertibility", work / "photos", "--weights", work / "w.safetensors",
                              "--device", "cpu"]}[kind]


# --------------------------------------------------------------------------- B7: speed --folder and a bomb

@pytest.mark.slow
def test_speed_folder_holding_a_decompression_bomb_is_one_line_naming_it(work, tmp_path):
    folder = tmp_path / "timing"
    shutil.copytree(work / "photos", folder)
    bomb = png_header_claiming(folder / "bomb.png", 60000)
    r = irae(*command("speed", work), "--folder", folder, "--json", tmp_path / "s.json")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r, str(bomb), "decompression bomb")
    assert "remove it from the timing folder" in line and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


# --------------------------------------------------------------------------- B9: report destinations

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["quality", "speed", "invertibility"])
@pytest.mark.parametrize("where", ["below-a-file", "in-proc"])
def test_report_that_cannot_be_written_exits_2_before_any_work(work, tmp_path, kind, where):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    if where == "in-proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    dest = {"below-a-file": notes / "r.json", "in-proc": Path("/proc/no-such-irae-folder/r.json")}[where]
    r = irae(*command(kind, work), "--json", dest)
    assert r.returncode == 2, r.stderr
    one_error_line(r, "--json", str(dest.parent))
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1  # no table, no progress: refused before any work
    assert notes.read_text() == "mine"


@pytest.mark.slow
def test_sheet_below_a_file_exits_2_before_any_work_and_writes_no_json(work, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    r = irae(*command("quality", work), "--json", tmp_path / "r.json", "--sheet", notes / "s.png")
    assert r.returncode == 2, r.stderr
    one_error_line(r, "--sheet", str(notes))
    assert r.stdout == "" and not (tmp_path / "r.json").exists() and notes.read_text() == "mine"


@pytest.mark.slow
def test_report_in_a_read_only_folder_exits_2_before_any_work(work, tmp_path):
    prefix = unprivileged()
    locked = tmp_path / "locked"
    locked.mkdir()
    try:
        locked.chmod(0o555)
        for kind, flag in (("quality", "--sheet"), ("speed", "--json"), ("invertibility", "--json")):
            r = irae(*command(kind, work), flag, locked / "report.out", prefix=prefix)
            assert r.returncode == 2, r.stderr
            one_error_line(r, flag, str(locked), "not writable")
            assert r.stdout == ""
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- B9: one failed output keeps the other

def test_a_sheet_that_cannot_be_saved_leaves_the_scores_in_the_result(work, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    result = quality(work / "photos", task="denoise", weights=str(work / "w.safetensors"), sigmas=[25],
                     device="cpu", classical="none", sheet=notes / "s.png")
    assert str(notes) in result["settings"]["sheet"]["error"]
    assert result["settings"]["n_images"] == 2 and result["results"]
    assert notes.read_text() == "mine"


@pytest.mark.slow
def test_a_full_disk_under_the_sheet_keeps_the_json_and_exits_1(work, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        sheet = disk / "s.png"
        r = irae(*command("quality", work), "--json", tmp_path / "r.json", "--sheet", sheet)
        assert r.returncode == 1, r.stderr
        line = one_error_line(r, str(sheet), "No space left on device")
        assert line.startswith("irae: error:") and "sigma25" in r.stdout
        assert not sheet.exists()
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["sheet"]["path"] == str(sheet) and "No space" in result["settings"]["sheet"]["error"]
    assert result["settings"]["n_images"] == 2 and result["failures"] == []


@pytest.mark.slow
def test_json_and_sheet_naming_one_file_exit_2_before_any_work(work, tmp_path):
    r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "25", work / "photos", "--weights",
             work / "w.safetensors", "--classical", "none", "--json", tmp_path / "r.png", "--sheet", tmp_path / "r.png")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    one_error_line(r, "--json and --sheet", "same file")
    assert not (tmp_path / "r.png").exists()
