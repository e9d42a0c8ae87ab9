"""Bad input and faults, as a user meets them: each case runs the real `irae` command on real files.

The house rules checked here: bad input gives ONE line naming the file and what to do (no
traceback); a batch keeps going and exits 1; usage errors exit 2 before any work; nothing a
user owns is overwritten or lost.  Disk-full cases use a 1 MiB tmpfs and skip where it cannot
be mounted; permission cases drop root's CAP_DAC_OVERRIDE with setpriv and skip where that
is unavailable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irae_cli.imageio import read_image
from irae_cli.model import create_model
from irae_cli.weights import save_weights
from util import irae as run_irae

DATA = Path(__file__).parent / "data"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- helpers

def irae(*args, cwd=None, timeout=180, prefix=(), env=None) -> subprocess.CompletedProcess:
    return run_irae(*args, cwd=cwd, timeout=timeout, prefix=prefix, env=env)


def assert_clean_stderr(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr.replace("irae: error:", ""), r.stderr


def lines_with(r: subprocess.CompletedProcess, needle: str) -> list[str]:
    return [line for line in r.stderr.splitlines() if needle in line]


def one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The single stderr line that names all ``needles``; fails on tracebacks or split lines."""
    assert_clean_stderr(r)
    hits = [line for line in r.stderr.splitlines() if all(n in line for n in needles)]
    assert len(hits) == 1, r.stderr
    return hits[0]


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def photo(name: str = "astronaut_128.png", size: int = 64) -> Image.Image:
    return Image.open(DATA / name).convert("RGB").resize((size, size))


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which permissions are enforced: root without CAP_DAC_OVERRIDE (or nothing)."""
    if not IS_ROOT:
        return ()
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE to enforce permissions")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here ({probe.stderr.strip()})")
    return prefix


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "1m"):
    """A 1 MiB tmpfs mounted on ``folder``; skips where mounting is impossible."""
    folder.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("a small full disk needs a tmpfs, and mounting one needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` completely, then free ``leave`` bytes."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


def exif_with_orientation(kind: int, count: int, value: bytes) -> bytes:
    """Raw EXIF whose only tag is Orientation stored with any TIFF type (Pillow would refuse to write it)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHI", 0x0112, kind, count) + value + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def bad_orientation_jpegs(folder: Path) -> list[Path]:
    """The audit's two malformed tags: the text "abc" and the number 0xFFFFFFFF."""
    folder.mkdir(parents=True, exist_ok=True)
    text, huge = folder / "text_tag.jpg", folder / "huge_tag.jpg"
    photo("astronaut_128.png", 128).save(text, quality=92, exif=exif_with_orientation(2, 4, b"abc\x00"))
    photo("coffee_128.png", 128).save(huge, quality=92, exif=exif_with_orientation(4, 1, struct.pack("<I", 2**32 - 1)))
    return [text, huge]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    x = torch.stack([read_image(DATA / "astronaut_128.png")[0]])
    out = {}
    for name, preset, task in (("denoise", "cnn-tiny", "denoise"), ("tiny", "tiny", "denoise"),
                               ("inpaint", "cnn-tiny", "inpaint")):
        torch.manual_seed(0)
        m = create_model(preset)
        m.initialize(x, x)
        out[name] = d / f"{name}.safetensors"
        save_weights(m, out[name], task=task, task_params={"fill": 0.5} if task == "inpaint" else None)
    return out


def folder_of(tmp_path: Path, n: int = 3, size: int = 64, name: str = "in") -> Path:
    src = tmp_path / name
    src.mkdir()
    names = ["astronaut_128.png", "coffee_128.png", "chelsea_128.png"]
    for i in range(n):
        photo(names[i % 3], size).save(src / f"img{i:02d}.png")
    return src


# --------------------------------------------------------------------------- 4-7, 15: malformed EXIF orientation

EXIF_COMMANDS = {
    "restore": lambda w, src, out: ["restore", "--task", "denoise", "--weights", w, src, out],
    "restore-dry-run": lambda w, src, out: ["restore", "--task", "denoise", "--weights", w, "--dry-run", src, out],
    "degrade": lambda w, src, out: ["degrade", "--task", "denoise", "--sigma", "25", src, out],
    "benchmark": lambda w, src, out: ["benchmark", "quality", "--task", "denoise", "--sigma", "25", "--weights", w,
                                      src],
    "train": lambda w, src, out: ["train", src, "--arch", "cnn-tiny", "--steps", "1", "--patch", "32",
                                  "--batch-size", "2", "--out", out / "w.safetensors", "-q"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(EXIF_COMMANDS))
def test_malformed_exif_orientation_is_ignored_with_one_warning(command, weights, tmp_path):
    """Text "abc" or 0xFFFFFFFF as the orientation: the pixels are used as stored, one warning per file."""
    src = tmp_path / "exif"
    bad = bad_orientation_jpegs(src)
    before = tree(src)
    out = tmp_path / "out"
    r = irae(*EXIF_COMMANDS[command](weights["denoise"], src, out))
    assert r.returncode == 0, r.stderr
    assert_clean_stderr(r)
    for p in bad:
        hits = lines_with(r, str(p))
        assert len(hits) == 1 and "warning" in hits[0] and "orientation" in hits[0], r.stderr
    assert tree(src) == before
    if command == "restore":
        for p in bad:
            assert Image.open(out / p.name).size == (128, 128)
    elif command == "restore-dry-run":
        assert "batches: 1 of up to 4 x 128x128" in r.stdout and "unreadable" not in r.stdout
    elif command == "degrade":
        assert len((out / "manifest.jsonl").read_text().splitlines()) == 2
    elif command == "train":
        assert (out / "w.safetensors").is_file()


def test_one_code_path_reads_the_orientation():
    """Only imageio reads the EXIF orientation tag; every command goes through it."""
    pkg = Path(__file__).resolve().parent.parent / "irae_cli"
    for path in pkg.rglob("*.py"):
        if path.name == "imageio.py":
            continue
        text = path.read_text()
        for needle in ("0x0112", "exif_transpose", "getexif(", "ORIENTATION"):
            assert needle not in text, f"{path} reads the orientation itself ({needle})"


# --------------------------------------------------------------------------- 18: control characters in file names

@pytest.mark.slow
def test_control_characters_in_file_names_are_escaped_in_every_message(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    photo().save(src / "ok.png")
    (src / "line\nbreak.png").write_bytes(b"")  # bad, so it is named in an error
    (src / "bell\x07tab\t.png").write_bytes(b"not a png")
    shown = ["line\\nbreak.png", "bell\\x07tab\\t.png"]

    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out")
    assert r.returncode == 1, r.stderr
    for name in shown:
        one_error_line(r, name, "failed")
    assert all(line.startswith(("irae:", "restored")) for line in r.stderr.splitlines()), r.stderr
    assert "\x07" not in r.stderr and "\t" not in r.stderr

    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], "--dry-run", src, tmp_path / "o2")
    assert all(line.startswith(("plan:", "  ")) for line in r.stdout.splitlines()), r.stdout
    assert "line\\nbreak.png ->" in r.stdout

    r = irae("degrade", "--task", "denoise", "--sigma", "25", src, tmp_path / "set")
    assert r.returncode == 1, r.stderr
    for name in shown:
        one_error_line(r, name)

    r = irae("train", src, "--arch", "cnn-tiny", "--steps", "1", "--patch", "32", "--batch-size", "2",
             "--out", tmp_path / "w.safetensors", "-q")
    assert r.returncode == 0, r.stderr
    for name in shown:
        one_error_line(r, name, "warning")

    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src / "line\nbreak.png",
             tmp_path / "single\nout.png")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 2, r.stderr  # the failure + the summary


# --------------------------------------------------------------------------- 8, 17: bad weights files

def rewrite_safetensors(src: Path, dest: Path, meta_changes: dict | None = None, tensor_changes: dict | None = None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes or {})
    for name, change in (tensor_changes or {}).items():
        tensors[name] = change(tensors[name])
    save_file(tensors, str(dest), metadata=meta)
    return dest


@pytest.mark.parametrize("field,value", [("task_params", "not json {"), ("config", "[1, 2, 3]"),
                                         ("training", "{'single': 'quotes'}"), ("task_params", "[]")])
@pytest.mark.slow
def test_weights_with_malformed_metadata_one_line_exit_2(weights, tmp_path, field, value):
    bad = rewrite_safetensors(weights["denoise"], tmp_path / "bad.safetensors", {field: value})
    src = folder_of(tmp_path, 1)
    r = irae("restore", "--task", "denoise", "--weights", bad, src, tmp_path / "out")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r, str(bad), repr(field))
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "irae: error:" in line and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "legacy", "plain-pickle"])
def test_pickle_weights_are_named_as_pickle_never_loaded(weights, tmp_path, kind):
    import pickle

    from safetensors.torch import load_file

    state = load_file(str(weights["denoise"]))
    bad = tmp_path / ("model.pt" if kind != "plain-pickle" else "model.weights")
    if kind == "plain-pickle":
        bad.write_bytes(pickle.dumps({k: v.tolist() for k, v in state.items()}))
    else:
        torch.save(state, bad, _use_new_zipfile_serialization=(kind == "zip"))
    src = folder_of(tmp_path, 1)
    r = irae("restore", "--task", "denoise", "--weights", bad, src, tmp_path / "out")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r, str(bad), "not a safetensors file", "never loads pickle")
    assert "truncated" not in line and "convert it" in line
    if kind != "zip":
        return
    r = irae("train", "--resume", bad, "--out", tmp_path / "w.safetensors", "--steps", "3")
    assert r.returncode == 2, r.stderr
    one_error_line(r, str(bad), "never loads pickle")
    assert not (tmp_path / "w.safetensors").exists()


# --------------------------------------------------------------------------- 9: bad checkpoints

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    src = d / "photos"
    src.mkdir()
    for name in ("astronaut_128.png", "coffee_128.png"):
        shutil.copy(DATA / name, src / name)
    r = irae("train", src, "--arch", "tiny", "--steps", "4", "--stop-at", "2", "--patch", "16", "--batch-size", "2",
             "--out", d / "run.safetensors", "-q")
    assert r.returncode == 0, r.stderr
    return d / "run.ckpt.safetensors"


def _bigger(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*(s + 1 for s in t.shape), dtype=t.dtype) if t.ndim else torch.zeros(2, dtype=t.dtype)


@pytest.mark.parametrize("case", ["config-not-json", "step-not-a-number", "model-tensor-shape", "ema-tensor-shape",
                                  "optimizer-tensor-shape", "rng-state"])
@pytest.mark.slow
def test_resume_of_a_malformed_checkpoint_one_line_exit_2(checkpoint, tmp_path, case):
    from safetensors.torch import load_file

    names = sorted(load_file(str(checkpoint)))
    model_t = next(n for n in names if n.startswith("model.") and n.endswith("weight"))
    changes = {
        "config-not-json": ({"config": "{not json"}, {}),
        "step-not-a-number": ({"step": '"two"'}, {}),
        "model-tensor-shape": ({}, {model_t: _bigger}),
        "ema-tensor-shape": ({}, {"ema." + model_t[len("model."):]: _bigger}),
        "optimizer-tensor-shape": ({}, {next(n for n in names if n.endswith(".exp_avg")): _bigger}),
        "rng-state": ({}, {"rng.torch": lambda t: t[:10]}),
    }[case]
    bad = rewrite_safetensors(checkpoint, tmp_path / "bad.ckpt.safetensors", *changes)
    out = tmp_path / "resumed.safetensors"
    r = irae("train", "--resume", bad, "--out", out, "--steps", "4", "-q")
    assert r.returncode == 2, r.stderr
    one_error_line(r, str(bad), "checkpoint")
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- 16: --tile 64, the documented minimum

@pytest.mark.slow
def test_minimum_tile_works_with_the_default_overlap(weights, tmp_path):
    src = folder_of(tmp_path, 1, size=128)
    report = tmp_path / "r.jsonl"
    r = irae("restore", "--task", "denoise", "--weights", weights["tiny"], "--tile", "64", src, tmp_path / "out",
             "--report", report)
    assert r.returncode == 0, r.stderr
    assert json.loads(report.read_text())["tiles"] > 1
    r = irae("restore", "--task", "denoise", "--weights", weights["tiny"], "--tile", "64", "--tile-overlap", "32",
             src, tmp_path / "out2")
    assert r.returncode == 2 and not (tmp_path / "out2").exists(), r.stderr
    one_error_line(r, "--tile-overlap 32", "--tile 64")


# --------------------------------------------------------------------------- 20: empty option values

@pytest.mark.parametrize("args", [
    ["restore", "--task", "denoise", "--weights", "", "IN", "OUT"],
    ["restore", "--task", "denoise", "--weights=", "IN", "OUT"],
    ["restore", "--task", "denoise", "--report", "", "IN", "OUT"],
    ["restore", "--task", "inpaint", "--masks", "", "IN", "OUT"],
    ["restore", "--task", "denoise", "", "OUT"],
    ["degrade", "--task", "inpaint", "--mask", ",", "IN", "OUT"],
    ["degrade", "--task", "denoise", "--sigma", ",", "IN", "OUT"],
    ["benchmark", "quality", "--task", "inpaint", "--mask", ",", "IN"],
    ["benchmark", "quality", "--task", "denoise", "--sigma", ",", "IN"],
    ["train", "IN", "--task", "inpaint", "--mask", ",", "--steps", "1", "--out", "OUT/w.safetensors"],
], ids=lambda a: " ".join(repr(x) if x in ("", ",") else x for x in a))
@pytest.mark.slow
def test_empty_option_values_are_usage_errors(tmp_path, args):
    src = folder_of(tmp_path, 1)
    cwd = tmp_path / "cwd"  # an empty INPUT or --masks must not quietly mean the current folder
    cwd.mkdir()
    photo().save(cwd / "here.png")
    before = tree(tmp_path)
    r = irae(*[str(src) if a == "IN" else str(tmp_path / "out") if a == "OUT" else
               str(tmp_path / "out" / "w.safetensors") if a == "OUT/w.safetensors" else a for a in args], cwd=cwd)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert_clean_stderr(r)
    assert len(r.stderr.splitlines()) == 1 and ("empty" in r.stderr or "no value" in r.stderr), r.stderr
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- 2, 19: the --report file

@pytest.mark.slow
def test_skip_existing_appends_to_an_existing_report(weights, tmp_path):
    src = folder_of(tmp_path, 2)
    report = tmp_path / "notes.jsonl"
    report.write_text("the user's own line, no newline at the end")
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out", "--report",
             report, "--skip-existing")
    assert r.returncode == 0, r.stderr
    lines = report.read_text().splitlines()
    assert lines[0] == "the user's own line, no newline at the end"
    assert [json.loads(x)["status"] for x in lines[1:]] == ["ok", "ok"]
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out", "--report",
             report, "--skip-existing")
    assert r.returncode == 0, r.stderr
    assert report.read_text().splitlines()[:3] == lines
    assert [json.loads(x)["status"] for x in report.read_text().splitlines()[3:]] == ["skipped", "skipped"]
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out2", "--report",
             report)
    assert r.returncode == 2 and not (tmp_path / "out2").exists()
    one_error_line(r, str(report), "already exists", "--overwrite")


@pytest.mark.parametrize("flag", [None, "--overwrite", "--skip-existing"])
def test_report_that_is_a_folder_is_called_a_folder(weights, tmp_path, flag):
    src = folder_of(tmp_path, 1)
    folder = tmp_path / "reports"
    folder.mkdir()
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out", "--report",
             folder, *([flag] if flag else []))
    assert r.returncode == 2 and not (tmp_path / "out").exists(), r.stderr
    line = one_error_line(r, str(folder), "is a folder")
    assert "Is a directory" not in line and "--overwrite to replace" not in line


# --------------------------------------------------------------------------- 10, 11: OUTPUT checked up front

@pytest.mark.slow
@pytest.mark.parametrize("where", ["existing-file", "below-a-file", "folder-input-onto-file"])
def test_output_that_is_or_lies_below_a_file_exits_2_before_work(weights, tmp_path, where):
    src = folder_of(tmp_path, 2)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    args = {"existing-file": [src / "img00.png", notes], "below-a-file": [src / "img00.png", notes / "out"],
            "folder-input-onto-file": [src, notes]}[where]
    before = tree(tmp_path)
    r = irae("restore", "--task", "denoise", "--weights", weights["tiny"], *args)
    assert r.returncode == 2, r.stderr
    one_error_line(r, str(notes))
    assert len(r.stderr.splitlines()) == 1 and tree(tmp_path) == before


@pytest.mark.slow
def test_unwritable_output_folder_exits_2_before_work(weights, tmp_path):
    prefix = unprivileged()
    src = folder_of(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    try:
        out.chmod(0o555)
        locked.chmod(0o555)
        for args in (["restore", src, out], ["restore", src, locked / "new"],
                     ["restore", src, tmp_path / "ok", "--report", locked / "r.jsonl"],
                     ["degrade", "--task", "denoise", src, locked / "set"],
                     ["train", src, "--arch", "cnn-tiny", "--steps", "1", "--out", locked / "w.safetensors"]):
            if args[0] == "restore":
                args = [*args, "--task", "denoise", "--weights", weights["denoise"]]
            r = irae(*args, prefix=prefix)
            assert r.returncode == 2, r.stderr
            one_error_line(r, "not writable")
            assert "restored" not in r.stderr and "step" not in r.stderr  # refused before any work
        assert list(out.iterdir()) == [] and list(locked.iterdir()) == [] and not (tmp_path / "ok").exists()
    finally:
        out.chmod(0o755)
        locked.chmod(0o755)


# --------------------------------------------------------------------------- 12: animated and multi-page files

@pytest.mark.slow
def test_multi_frame_files_are_refused_per_file_never_cut_silently(weights, tmp_path):
    src = folder_of(tmp_path, 1)
    frames = [photo(n) for n in ("astronaut_128.png", "coffee_128.png", "chelsea_128.png")]
    frames[0].save(src / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(src / "anim.png", save_all=True, append_images=frames[1:])  # APNG
    frames[0].save(src / "moving.webp", save_all=True, append_images=frames[1:], lossless=True)
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out")
    assert r.returncode == 1, r.stderr
    for name, kind in (("pages.tif", "3 pages"), ("anim.png", "3 frames"), ("moving.webp", "3 frames")):
        one_error_line(r, str(src / name), kind)
        assert not (tmp_path / "out" / name).exists()
    assert (tmp_path / "out" / "img00.png").is_file()

    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], gif, tmp_path / "out-gif")
    assert r.returncode == 1, r.stderr
    one_error_line(r, str(gif), "3 frames")
    assert not list((tmp_path / "out-gif").glob("*")) if (tmp_path / "out-gif").exists() else True

    r = irae("degrade", "--task", "denoise", "--sigma", "25", src, tmp_path / "set")
    assert r.returncode == 1, r.stderr
    one_error_line(r, str(src / "pages.tif"), "pages")


# --------------------------------------------------------------------------- 13: Ctrl-C and the report

def _ctrl_c_reaches_it() -> None:
    # A job a script starts in the background inherits SIGINT ignored, and so would the irae it
    # runs (a test run launched that way once saw every "Ctrl-C" run finish all its files): give the
    # child the default disposition a terminal gives it, so Python turns SIGINT into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_every_file_written_before_ctrl_c_has_its_report_line(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    # Noise compresses slowly at PNG level 9: writes are still in flight at Ctrl-C; enough images that the
    # run outlasts a poll a loaded machine delays by seconds (40 finished before such a poll once).
    for i in range(160):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    out, report = tmp_path / "out", tmp_path / "r.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "irae_cli", "restore", "--task", "denoise", "--weights",
                          str(weights["denoise"]), str(src), str(out), "--report", str(report), "--png-level", "9",
                          "-j", "2", "-b", "1"], stderr=subprocess.PIPE, text=True,
                         preexec_fn=_ctrl_c_reaches_it)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.is_dir() or len(list(out.glob("*.png"))) < 6):
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    written = {str(q) for q in out.glob("*.png")}
    recorded = {json.loads(line)["output"] for line in report.read_text().splitlines()
                if json.loads(line)["status"] == "ok"}
    assert written == recorded and len(written) >= 6
    assert not list(out.glob(".*irae-tmp*"))


# --------------------------------------------------------------------------- 14, also: resuming after a kill

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_skip_existing_removes_stale_temp_files_and_redoes_empty_outputs(weights, tmp_path):
    src = folder_of(tmp_path, 3)
    (src / "sub").mkdir()
    photo().save(src / "sub" / "deep.png")
    out = tmp_path / "out"
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, out)
    assert r.returncode == 0, r.stderr
    done = tree(out)
    dead = _dead_pid()
    stale = [out / f".img00.png.irae-tmp-{dead}-7f3a", out / "sub" / f".deep.png.irae-tmp-{dead}-1"]
    live = out / f".img01.png.irae-tmp-{os.getpid()}-2b"  # a run still writing: not ours to remove
    others = [out / ".img02.png.tmp-1", out / "notes.irae-tmp-1-1", tmp_path / f".x.png.irae-tmp-{dead}-1"]
    for f in stale + [live] + others:
        f.write_bytes(b"partial")
    (out / "img02.png").write_bytes(b"")  # a 0-byte output is not a finished one
    report = tmp_path / "r.jsonl"
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, out, "--skip-existing",
             "--report", report)
    assert r.returncode == 0, r.stderr
    assert not any(f.exists() for f in stale)
    assert live.exists() and all(f.exists() for f in others)
    now = tree(out)
    assert set(now) == set(done) | {live.name, ".img02.png.tmp-1", "notes.irae-tmp-1-1"}
    assert all(now[k] == done[k] for k in done if k != "img02.png")  # the finished outputs were left alone
    assert Image.open(out / "img02.png").size == (64, 64)
    records = {Path(json.loads(x)["input"]).name: json.loads(x) for x in report.read_text().splitlines()}
    assert records["img02.png"]["status"] == "ok" and "empty" in " ".join(records["img02.png"]["notes"])
    assert [records[n]["status"] for n in ("img00.png", "img01.png", "deep.png")] == ["skipped"] * 3


# --------------------------------------------------------------------------- 3: the report's disk fills up

@pytest.mark.slow
def test_report_disk_full_keeps_restoring_and_exits_1(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(24):
        photo(size=32).save(src / f"image-with-a-long-name-{i:03d}.png")
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk, leave=4096)
        report = disk / "run.jsonl"
        r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out",
                 "--report", report)
        assert r.returncode == 1, r.stderr
        line = one_error_line(r, str(report), "No space left on device")
        assert "irae: error:" in line and "restored 24, skipped 0, failed 0" in r.stderr
        lines = report.read_text().splitlines()
        assert 0 < len(lines) < 24 and all(json.loads(x)["status"] == "ok" for x in lines)
        assert report.read_text().endswith("\n")
    assert len(list((tmp_path / "out").glob("*.png"))) == 24


# --------------------------------------------------------------------------- 1: irae train on a full disk

@pytest.fixture(scope="module")
def train_photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-photos")
    for name in ("astronaut_128.png", "coffee_128.png"):
        shutil.copy(DATA / name, d / name)
    return d


def test_train_refuses_up_front_when_the_outputs_cannot_fit(train_photos, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk, leave=57 * 1024)
        r = irae("train", train_photos, "--arch", "tiny", "--steps", "3", "--patch", "16", "--batch-size", "2",
                 "--out", disk / "w.safetensors")
        assert r.returncode == 2, r.stderr
        line = one_error_line(r, str(disk), "free")
        assert "w.safetensors" in line and "w.ckpt.safetensors" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler.bin"]
        assert "step" not in r.stderr  # refused before the first step


def test_train_disk_full_at_save_keeps_what_fits_and_says_so(train_photos, tmp_path, monkeypatch):
    """The up-front check passed (space was taken meanwhile): the checkpoint fails, the smaller weights are saved."""
    from irae_cli import train as tr
    from irae_cli.train import setup as tr_setup

    # raising=True: a check that moves elsewhere must move this test with it, not pass it by
    monkeypatch.setattr(tr_setup, "check_output_space", lambda *a, **k: None)
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk, leave=320 * 1024)  # room for the weights (~160 KB) and the log, not the checkpoint (~650 KB)
        notes = []
        session = tr.Session(data=train_photos, out=disk / "w.safetensors", quiet=True, echo=notes.append,
                             checkpoint_every=0)
        with pytest.raises(Exception) as e:
            tr.train(session, {"arch": "tiny", "steps": 3, "patch": 16, "batch_size": 2})
        assert type(e.value).__name__ == "SaveError", e.value
        msg = str(e.value)
        assert "\n" not in msg and str(disk / "w.ckpt.safetensors") in msg and "No space left on device" in msg
        assert f"saved: {disk / 'w.safetensors'}" in msg and e.value.exit_code == 1
        assert sorted(p.name for p in disk.iterdir()) == ["filler.bin", "w.log.json", "w.safetensors"]  # no temp files
        from irae_cli.weights import load_weights

        assert load_weights(disk / "w.safetensors").training["steps"] == 3
        assert len([n for n in notes if "w.ckpt.safetensors" in n]) == 1


# --------------------------------------------------------------------------- also: sigma above 255

@pytest.mark.parametrize("args", [
    ["degrade", "--task", "denoise", "--sigma", "300", "IN", "OUT"],
    ["degrade", "--task", "denoise", "--sigma", "0-256", "IN", "OUT"],
    ["benchmark", "quality", "--task", "denoise", "--sigma", "25,300", "IN"],
    ["train", "IN", "--sigma", "0-300", "--steps", "1", "--out", "OUT/w.safetensors"],
])
@pytest.mark.slow
def test_sigma_above_255_is_a_usage_error(tmp_path, args, weights):
    src = folder_of(tmp_path, 1)
    r = irae(*[str(src) if a == "IN" else str(tmp_path / "out") if a == "OUT" else
               str(tmp_path / "out" / "w.safetensors") if a == "OUT/w.safetensors" else a for a in args],
             *(["--weights", weights["denoise"]] if args[0] == "benchmark" else []))
    assert r.returncode == 2, r.stderr
    one_error_line(r, "--sigma", "0-255")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- also: masks between 0 and 255

@pytest.mark.slow
def test_mask_values_between_0_and_255_warn_once_per_file(weights, tmp_path):
    src = folder_of(tmp_path, 2)
    masks = tmp_path / "masks"
    masks.mkdir()
    soft = np.zeros((64, 64), np.uint8)
    soft[10:20, 10:20] = 255
    soft[30:40, 30:40] = 200  # >= 128: a hole
    soft[50:60, 50:60] = 100  # < 128: known
    Image.fromarray(soft).save(masks / "img00.png")
    hard = np.zeros((64, 64), np.uint8)
    hard[5:15, 5:15] = 255
    Image.fromarray(hard).save(masks / "img01.png")
    r = irae("restore", "--task", "inpaint", "--weights", weights["inpaint"], "--masks", masks, src, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    line = one_error_line(r, str(masks / "img00.png"))
    assert "warning" in line and "200 mask pixel(s)" in line and ">= 128 are holes" in line
    assert not lines_with(r, str(masks / "img01.png"))
    out = np.asarray(Image.open(tmp_path / "out" / "img00.png")).astype(int)
    inp = np.asarray(Image.open(src / "img00.png")).astype(int)
    assert np.array_equal(out[50:60, 50:60], inp[50:60, 50:60])  # below half: known, kept exactly

    alpha = tmp_path / "alpha"
    alpha.mkdir()
    rgba = np.dstack([np.asarray(photo()), np.full((64, 64), 255, np.uint8)])
    rgba[0:8, 0:8, 3] = 0
    rgba[20:30, 20:30, 3] = 60
    Image.fromarray(rgba, "RGBA").save(alpha / "a.png")
    r = irae("restore", "--task", "inpaint", "--weights", weights["inpaint"], "--mask-from", "alpha", alpha,
             tmp_path / "out-alpha")
    assert r.returncode == 0, r.stderr
    line = one_error_line(r, str(alpha / "a.png"), "warning")
    assert "100 alpha pixel(s)" in line and "below 128 is a hole" in line


# --------------------------------------------------------------------------- also: symlinks out of the input folder

@pytest.mark.slow
def test_symlinks_out_of_the_input_folder_are_followed_and_never_written(weights, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    photo().save(outside / "far.png")
    (outside / "sub").mkdir()
    photo("coffee_128.png").save(outside / "sub" / "deep.png")
    src = folder_of(tmp_path, 1)
    (src / "link.png").symlink_to(outside / "far.png")
    (src / "linked-folder").symlink_to(outside / "sub")
    before = tree(outside)
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    made = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")}
    assert made == {"img00.png", "link.png", "linked-folder/deep.png"}
    assert not (tmp_path / "out" / "link.png").is_symlink() and tree(outside) == before


@pytest.mark.slow
def test_degrade_stopped_by_ctrl_c_describes_what_it_finished_and_resumes(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    n = 160  # the run must outlast a poll a loaded machine delays by seconds (40 finished first once)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    out = tmp_path / "set"
    args = [sys.executable, "-m", "irae_cli", "degrade", "--task", "denoise", "--sigma", "15,25,50", str(src), str(out)]
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_reaches_it)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not (out / "sigma50").is_dir() or len(list(out.glob("sigma50/*"))) < 4):
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "--skip-existing" in err.splitlines()[-1], err
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < n * 3
    r = subprocess.run(args + ["--skip-existing"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len((out / "manifest.jsonl").read_text().splitlines()) == n * 3
