"""The time-boxed GPU jobs: what they leave in $OUT fits the RESULTS_MAX_* limits, and one failed or
impossible step does not stop the others. (The scripts run end to end in a CPU rehearsal; these are
the cheap parts of that, kept in the suite.)"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def pack_results():
    spec = importlib.util.spec_from_file_location("pack_results", SCRIPTS / "pack_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fill(path: Path, mib: float, seed: int) -> bytes:
    import numpy as np

    data = np.random.default_rng(seed).bytes(int(mib * 2**20))  # incompressible, like float weights
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.mark.slow
def test_a_training_jobs_files_come_back_within_the_limits(tmp_path):
    lo = pack_results()
    work, out = tmp_path / "work", tmp_path / "OUT"
    # What one training task leaves: two ~21 MiB checkpoints, two ~5 MiB weights, logs, JSON, cards, a sheet.
    files = {"irae-denoise.ckpt.safetensors": 21.0, "cnn-denoise.ckpt.safetensors": 21.4,
             "irae-denoise.safetensors": 5.2, "cnn-denoise.safetensors": 5.3, "sheet-denoise.png": 1.2}
    blobs = {name: fill(work / name, mib, i) for i, (name, mib) in enumerate(files.items())}
    for name in ("irae-denoise.log.json", "cnn-denoise.log.json", "quality-denoise.json", "smoke.json",
                 "invertibility-denoise.json", "irae-denoise.md", "cnn-denoise.md"):
        (work / name).write_text('{"x": 1}\n' * 200)
        blobs[name] = (work / name).read_bytes()
    assert len(blobs) == 12
    (out / "job-denoise.log").parent.mkdir(parents=True)
    (out / "job-denoise.log").write_text("the live log\n")
    manifest = lo.pack(work, out, "job-denoise", log="job-denoise.log", quiet=True)
    assert manifest["left_out"] == [] and len(manifest["files"]) == 12
    assert lo.problems(out) == []
    back = lo.returned_files(out)
    assert len(back) <= 5 and all(p.stat().st_size <= 16 * 2**20 for p in back)  # the log + <= 4 parts
    # packing again (after the next step) replaces the pack, it does not add to it
    lo.pack(work, out, "job-denoise", log="job-denoise.log", quiet=True)
    assert sorted(p.name for p in lo.returned_files(out)) == sorted(p.name for p in back)
    dest = tmp_path / "here"
    (line,) = lo.unpack(out, dest)
    assert "12 file(s)" in line
    for name, data in blobs.items():
        assert (dest / "job-denoise" / name).read_bytes() == data
    (out / "job-denoise.tar.gz.part01").unlink()  # a part that did not come back: said, not half-unpacked
    with pytest.raises(SystemExit, match="parts missing|cannot unpack"):
        lo.unpack(out, tmp_path / "again")


def test_pack_leaves_out_the_largest_files_first_and_counts_other_runs(tmp_path):
    lo = pack_results()
    out = tmp_path / "OUT"
    speed = tmp_path / "speed"
    (speed / "model-fp32.json").parent.mkdir(parents=True)
    (speed / "model-fp32.json").write_text("{}\n")
    lo.pack(speed, out, "speed", log="speed.log", quiet=True)
    (out / "speed.log").write_text("log\n")
    work = tmp_path / "work"
    fill(work / "a.ckpt.safetensors", 30, 1)
    fill(work / "b.ckpt.safetensors", 30, 2)
    fill(work / "w.safetensors", 5, 3)
    (work / "quality.json").write_text("{}\n")
    manifest = lo.pack(work, out, "job-denoise", log="job-denoise.log", quiet=True)
    (out / "job-denoise.log").write_text("log\n")
    assert [d["path"] for d in manifest["left_out"]] == ["b.ckpt.safetensors"]
    assert {f["path"] for f in manifest["files"]} == {"quality.json", "w.safetensors", "a.ckpt.safetensors"}
    assert lo.problems(out) == [] and len(lo.returned_files(out)) <= 8
    (line, other) = sorted(lo.unpack(out, tmp_path / "here"))
    assert "1 left out on the job's machine" in line and "speed: 1 file(s)" in other


def test_check_names_what_would_not_come_back(tmp_path):
    lo = pack_results()
    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    found = " | ".join(lo.problems(tmp_path))
    assert "at most 8 come back" in found and "more than 2 folders down" in found and "bad name.txt" in found


def bash(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -uo pipefail; cd {ROOT}; source scripts/gpu_job_lib.sh; {script}"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PY": "python3", **env})


def test_steps_are_capped_recorded_and_never_stop_the_script(tmp_path):
    r = bash(f"preflight {tmp_path}/pack.safetensors {ROOT}/tests/data; step fails 10 false; step slow 1 sleep 5; "
             f"need thing {tmp_path}/missing.safetensors && echo SHOULD-NOT-RUN; "
             f"step works 10 true; summary", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"MISSING {tmp_path}/pack.safetensors (git-ignored: copy it to the job's machine with the checkout)" in r.stdout
    assert "steps that need a missing input are skipped" in r.stdout
    assert "== step fails: rc 1" in r.stdout and "stopped at its 1 s cap" in r.stdout
    assert "== skip thing:" in r.stdout and "missing.safetensors is missing" in r.stdout
    assert "SHOULD-NOT-RUN" not in r.stdout and "works: rc 0" in r.stdout


def test_the_plan_refuses_to_start_beyond_the_limit(tmp_path):
    r = bash("plan_line a 300; plan_line b 301; plan_check; echo STARTED", tmp_path)
    assert r.returncode == 2 and "STARTED" not in r.stdout and "exceeds JOB_LIMIT_S=600" in r.stderr
    r = bash("plan_line a 300; plan_line b 280; plan_check; echo STARTED", tmp_path)
    assert r.returncode == 0 and "580 s = 9.6 min" in r.stdout and "STARTED" in r.stdout


def test_the_limits_are_the_environment_s(tmp_path, monkeypatch):
    r = bash("plan_line a 300; plan_check; echo STARTED", tmp_path, JOB_LIMIT_S="200")
    assert r.returncode == 2 and "exceeds JOB_LIMIT_S=200" in r.stderr
    monkeypatch.setenv("RESULTS_MAX_FILES", "3")
    monkeypatch.setenv("RESULTS_MAX_FILE_MIB", "2")
    monkeypatch.setenv("RESULTS_MAX_MIB", "5")
    monkeypatch.setenv("RESULTS_MAX_DEPTH", "0")
    lo = pack_results()
    assert (lo.MAX_FILES, lo.MAX_FILE, lo.MAX_TOTAL, lo.MAX_DEPTH) == (3, 2 * 2**20, 5 * 2**20, 0)
    assert lo.PART < lo.MAX_FILE
    for i in range(4):
        (tmp_path / f"f{i}.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.txt").write_text("x")
    found = " | ".join(lo.problems(tmp_path))
    assert "at most 3 come back" in found and "more than 0 folders down" in found
    work = tmp_path / "work"
    fill(work / "a.safetensors", 1.5, 1)
    fill(work / "b.safetensors", 1.5, 2)
    fill(work / "c.safetensors", 1.5, 3)
    manifest = lo.pack(work, tmp_path / "OUT", "job", quiet=True)
    assert all(p["bytes"] <= lo.MAX_FILE for p in manifest["parts"])
    assert lo.problems(tmp_path / "OUT") == [] and manifest["left_out"]


@pytest.mark.parametrize("script", ["gpu_task_job.sh", "gpu_job.sh", "gpu_job_lib.sh"])
def test_scripts_parse_and_list_their_inputs(script):
    r = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if script != "gpu_job_lib.sh":
        text = (SCRIPTS / script).read_text()
        assert 'inputs: ["data/packs/train-128.safetensors", "data/photos/val"]' in text
        assert not re.search(r"^set -[a-z]*e", text, re.M)  # one failed step must not end the run


@pytest.mark.parametrize("task", ["denoise", "jpeg"])
def test_the_job_s_training_starts_from_the_shipped_weights_it_names(tmp_path, task):
    # The job's training flags with its default start: shipped weights change (the JPEG default became
    # conditioned on the quality), and a run that stops at its first line wastes a whole GPU job.
    text = (SCRIPTS / "gpu_job.sh").read_text()
    init = re.search(rf"^{task.upper()}_INIT=\$\{{{task.upper()}_INIT-(\S+)\}}$", text, re.M).group(1)
    line = re.search(rf"train_bg {task} (.*?)--out", text, re.S).group(1)
    flags = ["--condition", re.search(r"^JPEG_CONDITION=\$\{JPEG_CONDITION:-(\w+)\}$", text, re.M).group(1)] \
        if "--condition" in line else []
    r = subprocess.run(["irae", "train", "--task", task, str(ROOT / "tests" / "data"), "--arch", "medium",
                        "--init-from", str(ROOT / init), *flags, "--steps", "1", "--batch-size", "2", "--patch", "32",
                        "--compile", "off", "--device", "cpu", "--checkpoint-every", "0",
                        "--out", str(tmp_path / "w.safetensors"), "-q"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
