"""`irae restore` on many processes: torchrun (one node and several) and `--shard K/N` job arrays.

The runs that matter are the real commands of the README's "Scaling out" section, on the CPU:
``python -m torch.distributed.run`` stands in for ``torchrun``, gloo for NCCL, ``--device cpu``
for the GPUs.  Every split must give the single-process run's bytes, write each file once, and
leave a lost part re-runnable with ``--skip-existing``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from irae_cli.distributed import Dist
from irae_cli.errors import IraeError
from irae_cli.imageio import read_image
from irae_cli.model import create_model
from irae_cli.restore import RestoreOptions, plan_restore
from irae_cli.restore.scale_out import _split
from irae_cli.report_parts import join_parts, leftover_parts, part_path
from irae_cli.shard import FILE_PIXELS, Shard, header_pixels, parse_shard, split_by_pixels
from irae_cli.weights import save_weights
from util import irae as run_irae

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))
from test_restore import tree_hashes  # noqa: E402
from test_train import FAKE_ONE_GPU  # noqa: E402

# Sizes mixed on purpose, three of them equal (one process batches them, two processes may not).
SIZES = [(128, 96), (16, 16), (24, 40), (32, 32), (80, 20), (32, 32), (20, 72), (40, 40), (56, 24), (32, 32)]
BROKEN = "sub/broken.png"

# Process 1 of the torchrun job dies (SIGKILL, no clean-up) right after placing its second output.
KILL_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import signal
    _link, _placed = os.link, []
    def _link_then_die(*args, **kwargs):
        _link(*args, **kwargs)
        _placed.append(args)
        if len(_placed) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    os.link = _link_then_die
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    x = torch.stack([read_image(DATA / f"{n}_128.png")[0] for n in ("astronaut", "coffee")])
    m = create_model("cnn-tiny")
    m.initialize(x, x)
    path = tmp_path_factory.mktemp("weights") / "cnn-tiny.safetensors"
    save_weights(m, path, task="denoise")
    return path


@pytest.fixture(scope="module")
def photos_in(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("scale") / "IN"
    names = ["astronaut_128.png", "coffee_128.png", "chelsea_128.png", "camera_128_gray.png"]
    for i, size in enumerate(SIZES):
        folder = src / ("sub" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(DATA / names[i % 4]).resize(size).save(folder / f"img{i}.png")
    (src / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return src


def irae(*args, prefix=(), env=None, timeout=180) -> subprocess.CompletedProcess:
    return run_irae("restore", *args, python_args=prefix, env=env, timeout=timeout)


def torchrun(*args) -> list[str]:
    return ["-m", "torch.distributed.run", *map(str, args)]


def records(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.read_text().splitlines()]


def rel(src: Path, rec: dict) -> str:
    return Path(rec["input"]).relative_to(src).as_posix()


@pytest.fixture(scope="module")
def reference(photos_in, weights, tmp_path_factory) -> tuple[dict, list[dict]]:
    """One process, the whole folder: the bytes every split must reproduce."""
    d = tmp_path_factory.mktemp("reference")
    r = irae("--task", "denoise", photos_in, d / "OUT", "--weights", weights, "--device", "cpu",
             "--report", d / "r.jsonl")
    assert r.returncode == 1, r.stderr
    return tree_hashes(d / "OUT"), records(d / "r.jsonl")


def good_inputs() -> set[str]:
    return {f"{'sub/' if i % 3 == 0 else ''}img{i}.png" for i in range(len(SIZES))}


# --------------------------------------------------------------------------- the split itself

@pytest.mark.slow
def test_shard_option_is_checked_before_any_work(photos_in, weights, tmp_path):
    assert parse_shard("3/4") == Shard(3, 4) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    for bad, says in (("4/4", "below N"), ("0/0", "at least 1"), ("1", "give K/N"), ("-1/2", "give K/N"),
                      ("a/b", "give K/N")):
        with pytest.raises(IraeError, match=says):
            parse_shard(bad)
    r = irae("--task", "denoise", photos_in, tmp_path / "out", "--weights", weights, "--shard", "2/2",
             "--report", tmp_path / "r.jsonl")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["irae: error: --shard 2/2: K counts from 0 and must be below N (0 to 1 for "
                                     "2 parts)"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.jsonl").exists()


def test_split_by_pixels_is_balanced_by_pixels_and_deterministic():
    mp = 10**6
    pixels = [8 * mp, 1 * mp, 1 * mp, 1 * mp, 1 * mp, 1 * mp, 1 * mp, 1 * mp, 1 * mp, 0]
    groups = split_by_pixels(pixels, 2)
    # one large image weighs as much as eight small ones; the unreadable one only its per-file cost
    assert groups == [[0, 9], [1, 2, 3, 4, 5, 6, 7, 8]]
    assert split_by_pixels(pixels, 2) == groups and split_by_pixels(list(pixels), 2) == groups
    assert split_by_pixels(pixels, 1) == [list(range(10))]
    many = [(i * 7919) % 1000 * 1000 for i in range(500)]
    for parts in (3, 8):
        split = split_by_pixels(many, parts)
        assert sorted(i for g in split for i in g) == list(range(500))  # every image in exactly one part
        loads = [sum(many[i] + FILE_PIXELS for i in g) for g in split]
        assert max(loads) - min(loads) <= max(many) + FILE_PIXELS
    assert split_by_pixels([5, 5], 4) == [[0], [1], [], []]


def test_shard_under_torchrun_is_shared_by_the_job_processes(photos_in, weights, tmp_path):
    """--shard K/N picks the job's part first; the job's processes then split that part again."""
    plan = plan_restore(photos_in, tmp_path / "out", RestoreOptions(weights=str(weights)))
    paths = [j.source.path for j in plan.entries]

    class TwoProcesses(Dist):
        def all_gather(self, obj):  # what each process reads: every second header
            return [header_pixels(paths[r::self.world]) for r in range(self.world)]

    def outputs(p):
        return {j.output for j in p.jobs}

    part, _, _ = _split(plan, Shard(1, 2), Dist())
    mine = [_split(plan, Shard(1, 2), TwoProcesses(rank=r, world=2))[1][r] for r in range(2)]
    assert outputs(mine[0]) and outputs(mine[1]) and not outputs(mine[0]) & outputs(mine[1])
    assert outputs(mine[0]) | outputs(mine[1]) == outputs(part)
    other, _, _ = _split(plan, Shard(0, 2), Dist())
    assert outputs(part) | outputs(other) == outputs(plan) and not outputs(part) & outputs(other)


def test_report_parts_are_joined_in_rank_order_with_whole_lines(tmp_path):
    report = tmp_path / "run.jsonl"
    report.write_text('{"n": 0}')  # an earlier run cut mid-line
    part_path(report, 1).write_text('{"n": 2}\n')
    part_path(report, 0).write_text('{"n": 1}')  # a process killed mid-line
    (tmp_path / "run.jsonl.rank1.bak").write_text("not a part")
    assert leftover_parts(report) == [part_path(report, 0), part_path(report, 1)]
    assert join_parts(report, leftover_parts(report)) is None
    assert [json.loads(x)["n"] for x in report.read_text().splitlines()] == [0, 1, 2]
    assert leftover_parts(report) == [] and (tmp_path / "run.jsonl.rank1.bak").exists()


# --------------------------------------------------------------------------- job arrays: --shard K/N

@pytest.mark.slow
def test_shards_add_up_to_the_full_run_and_a_lost_shard_is_rerun(photos_in, weights, reference, tmp_path):
    """The README's job array: each task runs `--shard K/N --skip-existing --report run.K.jsonl`."""
    out = tmp_path / "OUT"
    done = {}
    for k in (0, 1):  # one after the other, into one folder: shard 1 never trips over shard 0's outputs
        r = irae("--task", "denoise", photos_in, out, "--weights", weights, "--device", "cpu",
                 "--shard", f"{k}/2", "--skip-existing", "--report", tmp_path / f"run.{k}.jsonl")
        assert r.returncode == (1 if BROKEN in {rel(photos_in, x) for x in records(tmp_path / f"run.{k}.jsonl")}
                                else 0), r.stderr
        assert f"(shard {k}/2)" in r.stderr
        done[k] = {rel(photos_in, x): x for x in records(tmp_path / f"run.{k}.jsonl")}
    assert not done[0].keys() & done[1].keys()
    assert done[0].keys() | done[1].keys() == good_inputs() | {BROKEN}
    assert tree_hashes(out) == reference[0]
    cost = [sum(x["size"][0] * x["size"][1] + FILE_PIXELS for x in d.values() if "size" in x) for d in done.values()]
    assert abs(cost[0] - cost[1]) <= max(w * h for w, h in SIZES) + FILE_PIXELS

    lost = sorted(k for k in done[1] if k != BROKEN)[:2]  # shard 1's node lost two of its files ...
    kept = next(k for k in done[0] if k != BROKEN)
    for name in lost + [kept]:  # ... and shard 0's one: not shard 1's to redo
        (out / name).unlink()
    r = irae("--task", "denoise", photos_in, out, "--weights", weights, "--device", "cpu",
             "--shard", "1/2", "--skip-existing", "--report", tmp_path / "again.jsonl")
    again = {rel(photos_in, x): x["status"] for x in records(tmp_path / "again.jsonl")}
    assert {k for k, s in again.items() if s == "ok"} == set(lost), r.stderr
    assert again.keys() == done[1].keys()
    assert not (out / kept).exists()
    assert {k: v for k, v in tree_hashes(out).items() if k != kept} == {k: v for k, v in reference[0].items()
                                                                        if k != kept}


# --------------------------------------------------------------------------- torchrun

@pytest.mark.slow
@pytest.mark.torchrun
@pytest.mark.sees_gpu
def test_torchrun_two_processes_write_what_one_process_writes(photos_in, weights, reference, tmp_path):
    """One node, two processes; a GPU that irae is told about must not move `--device cpu` off the CPU."""
    env = with_sitecustomize(tmp_path, FAKE_ONE_GPU)
    out, report = tmp_path / "OUT", tmp_path / "run.jsonl"
    r = irae("--task", "denoise", photos_in, out, "--weights", weights, "--device", "cpu", "--report", report,
             prefix=torchrun("--standalone", "--nproc_per_node", 2), env=env, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]  # one process met the broken file: the job exits 1
    assert tree_hashes(out) == reference[0]
    recs = records(report)
    assert sorted(rel(photos_in, x) for x in recs) == sorted(good_inputs() | {BROKEN})  # each file once
    assert {rel(photos_in, x) for x in recs if x["status"] == "ok"} == good_inputs()
    assert all(x["device"] == "cpu" for x in recs if x["status"] == "ok")
    assert not leftover_parts(report)
    assert [line for line in r.stderr.splitlines() if line.startswith("irae: failed")] == \
        [f"irae: failed: {photos_in / BROKEN}: not an image file Pillow can read (wrong extension or corrupt header)"]
    assert sum(line.startswith(f"restored {len(SIZES)}, skipped 0, failed 1 in ") and
               line.endswith(" by 2 processes") for line in r.stderr.splitlines()) == 1


def with_sitecustomize(tmp_path: Path, code: str) -> dict:
    """An environment whose Python processes (torchrun's too) run ``code`` at start-up."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.torchrun
def test_killed_process_then_skip_existing_finishes_exactly_the_rest(photos_in, weights, reference, tmp_path):
    """Process 1 is killed mid-run; the same job again with --skip-existing, on two "nodes", does the rest."""
    env = with_sitecustomize(tmp_path, KILL_RANK_1)
    out, report = tmp_path / "OUT", tmp_path / "run.jsonl"
    args = ["--task", "denoise", photos_in, out, "--weights", weights, "--device", "cpu", "--report", report]
    r = irae(*args, prefix=torchrun("--standalone", "--nproc_per_node", 2), env=env, timeout=300)
    assert r.returncode != 0 and "-9" in r.stderr, r.stderr[-3000:]
    written = {k for k in tree_hashes(out) if not k.split("/")[-1].startswith(".")}
    missing = good_inputs() - written
    assert written and missing
    for name in written:  # whatever is there under its name is whole
        assert tree_hashes(out)[name] == reference[0][name]
    before = len(report.read_text().splitlines()) + sum(len(p.read_text().splitlines())
                                                        for p in leftover_parts(report))

    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, *torchrun("--nnodes", 2, "--node_rank", n, "--nproc_per_node", 1, "--master_addr",
                                   "127.0.0.1", "--master_port", port), "-m", "irae_cli", "restore",
         *map(str, args), "--skip-existing"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        for n in (0, 1)]
    try:
        results = [(p.wait(timeout=300), p.stderr.read()) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    assert [code for code, _ in results] == [1, 1], results  # the broken file, on one node or the other
    assert tree_hashes(out) == reference[0]  # and the killed run's temp file is gone
    lines = records(report)
    assert len(lines) == before + len(SIZES) + 1 and not leftover_parts(report)
    this_run = {rel(photos_in, x): x["status"] for x in lines[before:]}
    assert {k for k, s in this_run.items() if s == "ok"} == missing
    assert {k for k, s in this_run.items() if s == "skipped"} == written


def test_temp_files_of_another_machine_are_left_until_an_hour_old(tmp_path):
    """Machines sharing an output folder cannot see each other's processes: never remove a write in flight."""
    from irae_cli.files import FOREIGN_TEMP_SECONDS, HOST_TAG, remove_stale_temp_files

    other = "0" * 8 if HOST_TAG != "0" * 8 else "1" * 8
    fresh, old = tmp_path / f".a.png.irae-tmp-1-1f.{other}", tmp_path / f".b.png.irae-tmp-1-2f.{other}"
    for f in (fresh, old):
        f.write_bytes(b"partial")
    os.utime(old, (0, os.stat(old).st_mtime - FOREIGN_TEMP_SECONDS - 60))
    assert remove_stale_temp_files([tmp_path]) == [old] and fresh.exists()
