"""The device smoke check: every CUDA-only path of irae once, one line each, within a time budget.

    python3 scripts/gpu_smoke.py --device cuda --budget 180 --json smoke.json [--val data/photos/val]
    python3 scripts/gpu_smoke.py --device cpu --arch tiny        # the CPU rehearsal of the same code

Each check prints ``smoke: NAME: ok|FAIL|skip: detail (seconds)`` and never stops the others; a check
that would start after the budget is used up is skipped (and says so). On the CPU every check runs
the same code with the CPU stand-in where one exists (torchvision's CPU JPEG codec for nvJPEG, an
emulated out-of-memory error, gloo for NCCL), so the script itself is rehearsed before a GPU job.
Exit status: 0 when nothing FAILed.

Checks: env, nvjpeg-decode (batch of grey / progressive / 4:4:4 / 4:2:0 JPEGs plus a CMYK and a
truncated file that must fall back to Pillow; PSNR against Pillow's decode), nvjpeg-train (the
training JPEG round trip at 4:4:4), bf16-vs-fp32 (restore of the bundled examples), compile
(``irae benchmark speed --compile``: graph breaks and recompile-limit warnings counted),
oom-restore and oom-train (a real out-of-memory run under a memory cap on CUDA: batch halved),
cuda-tests (``pytest -m "cuda or sees_gpu"``), torchrun (two processes: NCCL with two GPUs; with
one, the one-line refusal of ``--device auto`` and a CPU-pinned gloo run).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)  # torchvision's codec deprecation

RESULTS: list[dict] = []


class Skip(Exception):
    pass


class OutOfTime(Exception):
    pass


def _alarm(signum, frame):
    raise OutOfTime()


def check(name: str, fn, deadline: float, reserve: float = 5.0) -> None:
    left = deadline - time.monotonic()
    t0 = time.monotonic()
    if left < reserve:
        status, detail = "skip", "time budget used up"
    else:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(left)))
        try:
            status, detail = "ok", fn(left)
        except Skip as e:
            status, detail = "skip", str(e)
        except OutOfTime:
            status, detail = "FAIL", "stopped at the time budget"
        except Exception as e:  # noqa: BLE001 - one broken path must not hide the others
            status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        finally:
            signal.alarm(0)
    seconds = time.monotonic() - t0
    RESULTS.append({"check": name, "status": status, "detail": detail, "seconds": round(seconds, 1)})
    print(f"smoke: {name}: {status}: {detail} ({seconds:.1f} s)", flush=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def photo(size: int = 256) -> Image.Image:
    return Image.open(ROOT / "tests" / "data" / "astronaut_128.png").convert("RGB").resize((size, size))


# --------------------------------------------------------------------------- checks

def c_env(dev: torch.device, args) -> str:
    import torchvision

    where = "cpu"
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        where = (f"{torch.cuda.get_device_name(dev)}, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free), "
                 f"{torch.cuda.device_count()} GPU(s), bf16 {torch.cuda.is_bf16_supported()}")
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.version.cuda}; {where}"


def c_nvjpeg_decode(dev: torch.device, args) -> str:
    from irae_cli.imageio import read_image
    from irae_cli.restore import Job, RestoreOptions
    from irae_cli.restore.items import _decode_gpu_jpegs, _read
    from irae_cli.files import Source

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        img = photo(256)
        files = {"rgb420.jpg": dict(quality=85), "rgb444.jpg": dict(quality=85, subsampling=0),
                 "progressive.jpg": dict(quality=80, progressive=True)}
        for name, kw in files.items():
            img.save(d / name, **kw)
        img.convert("L").save(d / "grey.jpg", quality=85)
        img.convert("CMYK").save(d / "cmyk.jpg", quality=90)
        good = (d / "rgb420.jpg").read_bytes()
        (d / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
        names = sorted(p.name for p in d.iterdir())
        opts = RestoreOptions(task="denoise")
        items = [_read(Job(Source(d / n, Path(n)), d / "o" / n), False, opts, True) for n in names]
        to_nvjpeg = [it for it in items if it.blob is not None]
        pillow_only = sorted(it.job.source.rel.name for it in items if it.blob is None)
        # a cut file never reaches nvJPEG (which would decode it without complaint): Pillow reports it
        if "truncated.jpg" not in pillow_only:
            raise AssertionError("the truncated JPEG was sent to nvJPEG")
        plain = to_nvjpeg
        done = _decode_gpu_jpegs(plain, dev)
        worst, failed = math.inf, []
        for it in done:
            if it.error:
                failed.append(f"{it.job.source.rel.name}: {it.error}")
                continue
            ref, _ = read_image(it.job.source.path)
            if tuple(ref.shape) != tuple(it.x.shape):
                raise AssertionError(f"{it.job.source.rel.name}: shape {tuple(it.x.shape)} vs Pillow "
                                     f"{tuple(ref.shape)}")
            worst = min(worst, psnr(it.x, ref))
        decoder = "nvJPEG" if dev.type == "cuda" else "torchvision CPU decoder (rehearsal)"
        if worst < 35:
            raise AssertionError(f"{decoder} differs from Pillow: min PSNR {worst:.1f} dB")
        if failed:
            raise AssertionError("; ".join(failed))
        return (f"{len(plain)} files in one {decoder} batch (grey, progressive, 4:4:4, 4:2:0); Pillow for "
                f"{', '.join(pillow_only)}; min PSNR vs Pillow {worst:.1f} dB")


def c_nvjpeg_train(dev: torch.device, args) -> str:
    from irae_cli import degradations as dg

    problem = dg.nvjpeg_problem(dev) if dev.type == "cuda" else None
    if problem:
        raise AssertionError(f"nvJPEG round trip unusable: {problem} (4:4:4 training would use Pillow)")
    x = torch.from_numpy(np.array(photo(128))).permute(2, 0, 1).contiguous()
    batch = x[None].repeat(8, 1, 1, 1).to(dev)
    qualities = [10, 20, 30, 40, 50, 60, 80, 90]
    t0 = time.perf_counter()
    y = dg.jpeg_batch_cuda(batch, qualities)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    ref = dg.jpeg_batch_u8(x[None].repeat(8, 1, 1, 1), qualities, "4:4:4")
    gaps = [psnr(y[i].cpu().float() / 255, ref[i].float() / 255) for i in range(8)]
    vs_clean = [psnr(y[i].cpu().float() / 255, x.float() / 255) for i in range(8)]
    engine = "nvJPEG" if dev.type == "cuda" else "torchvision CPU codec (rehearsal)"
    return (f"{engine} 4:4:4 round trip of 8 patches in {dt * 1000:.0f} ms; PSNR vs clean q10 {vs_clean[0]:.1f} .. "
            f"q90 {vs_clean[-1]:.1f} dB; vs Pillow 4:4:4 {min(gaps):.1f}-{max(gaps):.1f} dB")


def c_bf16(dev: torch.device, args) -> str:
    from irae_cli.files import discover
    from irae_cli.imageio import read_image
    from irae_cli.inference import Restorer
    from irae_cli.tasks import get_task
    from irae_cli.weights import default_weights_for, load_weights

    name = default_weights_for("denoise")
    lw = load_weights(name, device="cpu", expect_task="denoise")
    folders = [ROOT / "examples" / "noisy"] + ([Path(args.val)] if args.val and Path(args.val).is_dir() else [])
    images = [read_image(s.path)[0] for f in folders for s in discover(f)][: args.bf16_images]
    out = {}
    for dt in ("fp32", "bf16"):
        r = Restorer(lw.model, get_task("denoise"), device=dev, dtype=dt)
        out[dt] = [r(x[None])[0] for x in images]
    gaps = [psnr(a, b) for a, b in zip(out["fp32"], out["bf16"])]
    worst = max(float((a - b).abs().max()) for a, b in zip(out["fp32"], out["bf16"]))
    mp = sum(x.shape[-1] * x.shape[-2] for x in images) / 1e6
    return (f"{name} on {len(images)} image(s), {mp:.2f} MP: bf16 vs fp32 restore PSNR min {min(gaps):.1f} / "
            f"mean {sum(gaps) / len(gaps):.1f} dB, max abs {worst * 255:.2f} levels of 255")


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def c_compile(dev: torch.device, args) -> str:
    from irae_cli.benchmark.speed import speed

    handler = _Count()
    loggers = [logging.getLogger(n) for n in ("torch._dynamo", "torch._inductor")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        import torch._dynamo.utils as dutils

        dutils.counters.clear()
    except Exception:  # noqa: BLE001
        dutils = None
    dt = "bf16" if dev.type == "cuda" else "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = speed(arch=args.arch, size=args.compile_size, batch_size=1, dtype=dt, device=str(dev),
                  compile=True, repeats=3, warmup=2)
    for lg in loggers:
        lg.removeHandler(handler)
    texts = handler.records + [str(w.message) for w in caught]
    limit_hits = [t for t in texts if "recompile_limit" in t or "cache_size_limit" in t or "recompil" in t.lower()]
    breaks = sum(dutils.counters["graph_break"].values()) if dutils is not None else "?"
    frames = dict(dutils.counters["stats"]) if dutils is not None else {}
    (m,) = s["results"]
    detail = (f"{args.arch} {args.compile_size}px {dt}: compile={s['settings']['compile']}, "
              f"{m['mp_per_s']:.2f} MP/s, graph breaks {breaks}, frames {frames.get('unique_graphs', '?')} graphs, "
              f"recompile warnings {len(limit_hits)}")
    if s["notes"]:
        detail += f"; notes: {' | '.join(s['notes'])[:300]}"
    if limit_hits:
        detail += f"; first: {limit_hits[0][:200]}"
    if limit_hits or not s["settings"]["compile"]:
        raise AssertionError(detail)
    return detail


class _OomAbove(torch.nn.Module):
    """CPU stand-in for a full card: the CUDA out-of-memory error above a batch."""

    def __init__(self, inner, max_batch):
        super().__init__()
        self.inner, self.max_batch = inner, max_batch
        self.config, self.size_multiple = inner.config, inner.size_multiple

    def forward(self, x):
        if x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory (emulated on the CPU)")
        return self.inner(x)


class _MemoryCap:
    """Cap this process's CUDA memory to ``gib`` (a real out-of-memory run), then lift it."""

    def __init__(self, dev: torch.device, gib: float):
        # set_per_process_memory_fraction wants an index: torch 2.11 refuses a bare "cuda"
        self.dev = dev.index if dev.index is not None else torch.cuda.current_device()
        self.gib = gib

    def __enter__(self):
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, self.gib * 2**30 / total), self.dev)
        return self

    def __exit__(self, *exc):
        torch.cuda.set_per_process_memory_fraction(1.0, self.dev)
        torch.cuda.empty_cache()


def c_oom_restore(dev: torch.device, args) -> str:
    from irae_cli.benchmark.models import preset_model
    from irae_cli.inference import Restorer
    from irae_cli.tasks import get_task

    model = preset_model(args.arch).model
    side = args.oom_side
    x = torch.rand(8, 3, side, side, generator=torch.Generator().manual_seed(0))
    if dev.type == "cuda":
        # the cap: what one image takes, three times over, so that 8 cannot fit and 2 can
        r = Restorer(model, get_task("denoise"), device=dev, dtype="bf16", tile=0, batch_size=1)
        r(x[:1])
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        r(x[:1])
        one = torch.cuda.max_memory_allocated(dev) - base
        gib = (base + 3 * one) / 2**30
        r = Restorer(model, get_task("denoise"), device=dev, dtype="bf16", tile=0, batch_size=8)
        with _MemoryCap(dev, gib):
            r(x)
            r(x)  # the second batch must start at the size that fitted
        how = f"real, under a {gib:.2f} GiB cap (one image takes {one / 2**30:.2f} GiB)"
    else:
        r = Restorer(_OomAbove(model, 2), get_task("denoise"), device=dev, dtype="fp32", tile=0, batch_size=8)
        r(x)
        r(x)
        how = "emulated"
    if not r.stats.oom_retries:
        raise AssertionError(f"no out-of-memory at batch 8 of {side}px ({how}); nothing was halved")
    return f"{how}: 2 x 8 images of {side}px, batch ends at {r.batch_size}; notes: {'; '.join(r.stats.notes)}"


def c_oom_train(dev: torch.device, args) -> str:
    from irae_cli import train as tr

    with tempfile.TemporaryDirectory() as d:
        notes: list[str] = []
        session = tr.Session(data=ROOT / "tests" / "data", out=Path(d) / "w.safetensors", quiet=True,
                             device=str(dev), echo=notes.append, checkpoint_every=0)
        given = {"arch": args.arch, "steps": 2, "patch": 64, "batch_size": args.oom_train_batch, "ema": 0}
        if dev.type == "cuda":
            with _MemoryCap(dev, args.oom_gib):
                res = tr.train(session, given)
            how = f"real, under a {args.oom_gib:g} GiB cap"
        else:
            from irae_cli.train import trainer

            real = trainer.inverse_gain_penalty

            def penalty(model, restored, *a):
                if restored.shape[0] > 4:
                    raise torch.OutOfMemoryError("CUDA out of memory (emulated on the CPU)")
                return real(model, restored, *a)
            trainer.inverse_gain_penalty = penalty  # the name the training step calls
            try:
                res = tr.train(session, given)
            finally:
                trainer.inverse_gain_penalty = real
            how = "emulated"
    halvings = res.summary.get("oom_halvings", [])
    if not halvings:
        raise AssertionError(f"no out-of-memory at batch {args.oom_train_batch} of 64 px ({how})")
    return (f"{how}: {args.arch} batch {args.oom_train_batch} -> {res.summary['config']['batch_size']} "
            f"({len(halvings)} halving(s)), {res.steps} steps done")


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, timeout), cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def c_cuda_tests(dev: torch.device, args, left: float) -> str:
    r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or sees_gpu",
              "tests"], left - 3)
    tail = [line for line in r.stdout.splitlines() if line.strip()]
    last = tail[-1] if tail else r.stderr.strip().splitlines()[-1:]
    failed = [line for line in tail if line.startswith("FAILED") or line.startswith("ERROR")]
    if r.returncode not in (0, 5):
        raise AssertionError(f"{last}; {' | '.join(failed)[:400]}")
    return str(last)


def c_torchrun(dev: torch.device, args, left: float) -> str:
    n = torch.cuda.device_count() if dev.type == "cuda" else 0
    port = str(29500 + os.getpid() % 1000)
    with tempfile.TemporaryDirectory() as d:
        base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                "-m", "irae_cli", "train", str(ROOT / "tests" / "data"), "--arch", "tiny", "--steps", "3",
                "--patch", "16", "--batch-size", "4", "-q"]
        lines = []
        if n >= 2:
            r = _run(base + ["--out", str(Path(d) / "nccl.safetensors"), "--device", "cuda"], left / 2)
            if r.returncode != 0:
                raise AssertionError(f"2-process NCCL run failed: {r.stderr.strip().splitlines()[-1:]}")
            lines.append("2 processes on 2 GPUs over NCCL: ok")
        elif n == 1:
            r = _run(base + ["--out", str(Path(d) / "auto.safetensors"), "--device", "auto"], left / 3)
            said = [line for line in r.stderr.splitlines() if "no GPU of its own" in line]
            if r.returncode == 0 or not said:
                raise AssertionError(f"2 processes on 1 GPU with --device auto: expected the one-line refusal, got "
                                     f"rc {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
            lines.append("2 processes on 1 GPU, --device auto: refused in one line")
        r = _run(base + ["--out", str(Path(d) / "gloo.safetensors"), "--device", "cpu"],
                 left - 5 if n < 2 else left / 2)
        if r.returncode != 0:
            raise AssertionError(f"2-process --device cpu run failed{' with a GPU visible' if n else ''}: "
                                 f"{r.stderr.strip().splitlines()[-1:]}")
        lines.append(f"2 processes --device cpu over gloo{' with a GPU visible' if n else ''}: ok")
    return "; ".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds for all checks (default 180)")
    ap.add_argument("--arch", default=None, help="model for compile and OOM checks (paper-denoise on CUDA, "
                                                 "tiny on the CPU)")
    ap.add_argument("--val", default=None, help="validation photos for the bf16 check (besides the examples)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--skip", default="", help="comma-separated checks to leave out")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("smoke: env: FAIL: --device cuda but torch sees no GPU", flush=True)
        return 1
    args.arch = args.arch or ("paper-denoise" if cuda else "tiny")
    args.compile_size = 512 if cuda else 64
    args.oom_side = 1024 if cuda else 64
    args.oom_gib = 3.0
    args.oom_train_batch = 512 if cuda else 16
    args.bf16_images = 8 if cuda else 2
    t0 = time.monotonic()
    deadline = t0 + args.budget
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    def save() -> None:  # after every check: a run stopped from outside keeps what it found
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"device": str(dev), "budget_s": args.budget,
                                             "seconds": round(time.monotonic() - t0, 1), "results": RESULTS},
                                            indent=1) + "\n")

    plan = [
        ("env", lambda left: c_env(dev, args)),
        ("nvjpeg-decode", lambda left: c_nvjpeg_decode(dev, args)),
        ("nvjpeg-train", lambda left: c_nvjpeg_train(dev, args)),
        ("bf16-vs-fp32", lambda left: c_bf16(dev, args)),
        ("oom-restore", lambda left: c_oom_restore(dev, args)),
        ("oom-train", lambda left: c_oom_train(dev, args)),
        ("torchrun", lambda left: c_torchrun(dev, args, min(left, 60))),
        ("cuda-tests", lambda left: c_cuda_tests(dev, args, min(left, 90))),
        ("compile", lambda left: c_compile(dev, args)),  # last: the slowest, and it changes dynamo state
    ]
    for name, fn in plan:
        if name in skip:
            RESULTS.append({"check": name, "status": "skip", "detail": "--skip", "seconds": 0})
            print(f"smoke: {name}: skip: --skip (0.0 s)", flush=True)
            continue
        check(name, fn, deadline)
        save()
    bad = [r["check"] for r in RESULTS if r["status"] == "FAIL"]
    total = time.monotonic() - t0
    print(f"smoke: done in {total:.0f} s (budget {args.budget:.0f} s): "
          f"{sum(r['status'] == 'ok' for r in RESULTS)} ok, {len(bad)} FAIL"
          f"{' (' + ', '.join(bad) + ')' if bad else ''}, {sum(r['status'] == 'skip' for r in RESULTS)} skipped",
          flush=True)
    save()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
