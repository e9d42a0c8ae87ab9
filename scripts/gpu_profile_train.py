"""Where an IRAE training step spends its time on a device: step time under variants, then a profile.

    python3 scripts/gpu_profile_train.py --device cuda --arch medium --json OUT.json

Variants (same model, random uint8 patches, the training step's own pieces): the full step (bf16
coupling nets, inverse-gain probe every step, loss.item() host sync, gradient clip, fused Adam),
then one piece removed at a time, at two batch sizes (a step time that barely grows with the batch
means the step is bound by launches or the host, not by arithmetic). Then the top operators of a
torch.profiler trace of the full step, by device time and by host time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from irae_cli import train as tr  # noqa: E402
from irae_cli.inference import LowPrecision  # noqa: E402
from irae_cli.model import create_model  # noqa: E402


def build(arch, device, bf16):
    model = create_model(arch).to(device)
    x = torch.rand(8, 3, 64, 64, device=device)
    model.initialize(x, x, start="data")
    precision = LowPrecision(model, device, torch.bfloat16 if bf16 else torch.float32).attach()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    return model, opt, precision


def make_step(model, opt, device, *, probe=True, sync=True, clip=True):
    gen = torch.Generator(device=device).manual_seed(0)
    params = list(model.parameters())

    def step(inp, clean):
        restored = model(inp)
        loss = tr.training_loss(restored, clean, None)
        if sync:
            float(loss.detach().item())
        objective = loss
        if probe:
            objective = loss + tr.inverse_gain_penalty(model.inverse, restored, inp, 1000.0, gen)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    return step


def timed(step, batch, patch, device, n):
    clean = torch.rand(batch, 3, patch, patch, device=device)
    inp = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    for _ in range(3):
        step(inp, clean)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step(inp, clean)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="medium")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--json")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "arch": a.arch,
               "torch": torch.__version__, "variants": [], "profile": {}}
    variants = [("full", dict(bf16=True, probe=True, sync=True, clip=True)),
                ("no probe", dict(bf16=True, probe=False, sync=True, clip=True)),
                ("no sync", dict(bf16=True, probe=True, sync=False, clip=True)),
                ("no clip", dict(bf16=True, probe=True, sync=True, clip=False)),
                ("fp32", dict(bf16=False, probe=True, sync=True, clip=True)),
                ("bare (fp32, no probe/sync/clip)", dict(bf16=False, probe=False, sync=False, clip=False))]
    for batch in [int(b) for b in a.batches.split(",")]:
        for name, v in variants:
            model, opt, _ = build(a.arch, device, v["bf16"])
            step = make_step(model, opt, device, probe=v["probe"], sync=v["sync"], clip=v["clip"])
            s = timed(step, batch, 64, device, a.steps)
            row = {"variant": name, "batch": batch, "ms_per_step": round(1000 * s, 2),
                   "patches_per_s": round(batch / s, 1)}
            print(json.dumps(row), flush=True)
            results["variants"].append(row)
    model, opt, _ = build(a.arch, device, True)
    step = make_step(model, opt, device)
    clean = torch.rand(64, 3, 64, 64, device=device)
    for _ in range(3):
        step(clean, clean)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                     if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            step(clean, clean)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    for key in (["cuda_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]:
        table = events.table(sort_by=key, row_limit=22, max_name_column_width=48)
        print(table, flush=True)
        results["profile"][key] = table
    results["kernel_launches_per_step"] = sum(e.count for e in events if e.key == "cudaLaunchKernel") / 3
    print("kernel launches per step:", results["kernel_launches_per_step"])
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
