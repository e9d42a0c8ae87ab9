"""Learning curves of the training campaign as markdown tables: validation PSNR against patches seen.

Reads the JSON logs that `irae train` writes (OUT.log.json) and prints, per run, one
row per validation: step, patches seen (step x batch size, plus what the run's
--init-from weights had seen, when given), the PSNR of each level and, in the
header, the input's PSNR (the degraded image itself; for inpainting its harmonic fill).

    python scripts/curves.py > docs/training-curves.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (title, log, patches seen before this run by the weights it started from, what it is)
RUNS = [
    ("Denoise, `medium`, CPU", "training/denoise/medium.log.json", 0,
     "lr 5e-4, batch 16 of 64², one CPU thread; 512 px validation crops"),
    ("Denoise, `medium`, H200 (from the CPU run)", "training/h200/denoise.log.json", 124_496,
     "batch 128 of 64², beside four other runs; the previous default denoiser"),
    ("Denoise, IRAE `medium` fresh, H200 (same recipe as the CNN below)", "training/h200/cmp-irae.log.json", 0,
     "lr 5e-4, batch 64 of 64²"),
    ("Denoise, CNN `cnn-medium` fresh, H200 (the non-invertible comparator)", "training/h200/cmp-cnn.log.json", 0,
     "lr 5e-4, batch 64 of 64²; shipped as `cnn-denoise-medium`"),
    ("Denoise, `medium`, CPU again (a new schedule from the H200 weights)", "training/denoise/medium-cpu2.log.json",
     159_056, "lr 2e-4, batch 16 of 64², one CPU thread, compiled (`--compile on`); 512 px validation crops"),
    ("Denoise, `medium`, the inverse gain bounded at 300 (from the run above)",
     "training/denoise/medium-cpu2-bounded.log.json", 327_056,
     "lr 5e-5, batch 16 of 64², probed every step, compiled; shipped as `irae-denoise-medium`"),
    ("Denoise, `medium`, a third CPU schedule (from the shipped weights, the bound at 300 from the start)",
     "training/denoise/medium-cpu3.log.json", 345_056,
     "lr 2e-4, batch 16 of 64², probed every 4th step, compiled; failed the 4 MP round trip"),
    ("Denoise, `medium`, the bound of 300 probed every step (from the run above)",
     "training/denoise/medium-cpu3-bounded.log.json", 486_768,
     "lr 5e-5, compiled; still failed the 4 MP round trip (1.12 levels)"),
    ("Denoise, `medium`, the slope fp32 rounding meets bounded at 1200 (from the run above)",
     "training/denoise/medium-cpu3-fine1200.log.json", 499_984,
     "lr 5e-5, `--inverse-probe 1e-5`, fp32, probed every step, compiled; the default before the run below"),
    ("Denoise, `medium`, a fourth schedule under the 1e-3 probe (from the run two above; stopped)",
     "training/denoise/medium-cpu4.log.json", 499_984,
     "lr 2e-4, probed every 4th step, compiled; superseded by the fine-slope bound, not shipped"),
    ("Denoise, `medium`, a fifth schedule under the fine-slope bound (from the fine-tune two above)",
     "training/denoise/medium-cpu5.log.json", 508_288,
     "lr 1e-4, `--inverse-probe 1e-5 --inverse-gain 1200`, fp32, probed every 2nd step, compiled; "
     "the default before the run two below"),
    ("Denoise, `medium`, a sixth schedule (from the run above)",
     "training/denoise/medium-cpu6.log.json", 542_384,
     "lr 1e-4, the same bound, fp32, probed every 2nd step, compiled; its length re-set from its speed"),
    ("Denoise, `medium`, a seventh schedule (from the run above)",
     "training/denoise/medium-cpu7.log.json", 617_232,
     "lr 1e-4, the same bound, coupling nets bf16 with the probe in fp32, probed every 4th step, compiled"),
    ("Denoise, `medium`, an eighth schedule (from the run above)",
     "training/denoise/medium-cpu8.log.json", 697_232,
     "lr 1e-4, the same bound and precision, probed every 2nd step, compiled; its length re-set from its speed"),
    ("Denoise, `medium`, a ninth schedule (from the run above)",
     "training/denoise/medium-cpu9.log.json", 766_912,
     "lr 1e-4, the same bound and precision, probed every 4th step, compiled; shipped as `irae-denoise-medium`"),
    ("Denoise, `medium`, a tenth schedule at half the learning rate (from the run above)",
     "training/denoise/medium-cpu10.log.json", 866_128,
     "lr 5e-5, the same bound and precision, probed every 4th step, compiled; its length re-set from its speed"),
    ("Denoise, `medium`, photos with texture (from the first texture schedule, `training/levers/texture-photos.*`)",
     "training/denoise/texture-cpu2.log.json", 1_185_824,
     "lr 5e-5, 42 photos, the same bound and precision, compiled; the default before the run below"),
    ("Denoise, `medium`, a third schedule on the texture photos (from the run above)",
     "training/denoise/texture-cpu3.log.json", 1_337_824,
     "lr 5e-5, 42 photos, the same bound and precision, compiled, two `--resume` chunks; "
     "the default before the run below"),
    ("Denoise, `medium`, a fourth schedule on the texture photos (from the run above)",
     "training/denoise/texture-cpu4.log.json", 1_489_824,
     "lr 5e-5, 42 photos, the same bound and precision, compiled, three `--resume` chunks; "
     "shipped as `irae-denoise-medium`"),
    ("Denoise, CNN `cnn-medium` fresh, CPU (the comparator at equal CPU minutes, first chunk)",
     "training/cmp/cnn-medium-cpu.log.json", 0,
     "lr 5e-4, batch 16 of 64², one CPU thread, compiled; 512 px validation crops"),
    ("Denoise, CNN `cnn-medium`, CPU, second chunk (from the run above)",
     "training/cmp/cnn-medium-cpu2.log.json", 13_840,
     "lr 5e-4 (a new cosine), batch 16 of 64², one CPU thread, compiled; 86 CPU-minutes in all at its end"),
    ("Denoise, CNN `cnn-medium`, CPU, third chunk (from the run above)",
     "training/cmp/cnn-medium-cpu3.log.json", 38_528,
     "lr 5e-4 (a new cosine), batch 16 of 64², one CPU thread, compiled; 124 CPU-minutes in all at its end"),
    ("Denoise, CNN `cnn-medium`, CPU, fourth chunk (from the run above)",
     "training/cmp/cnn-medium-cpu4.log.json", 54_112,
     "lr 5e-4 (a new cosine), batch 16 of 64², one CPU thread, compiled; 181 CPU-minutes in all at its end"),
    ("JPEG, `medium` from an identity start, CPU", "training/jpeg/medium-identity.log.json", 0,
     "lr 3e-4, batch 16 of 64², quality 10-90 blind, one CPU thread; 256 px validation crops"),
    ("JPEG, `medium`, CPU again (a new schedule from the shipped weights)", "training/jpeg/medium-2.log.json", 200_000,
     "lr 1e-4, batch 16 of 64², quality 10-90 blind, one CPU thread; 256 px validation crops"),
    ("JPEG, `medium`, told the quality (a second schedule, widened from the identity-start run)",
     "training/levers/jpeg-condition-quality.log.json", 200_000,
     "lr 1e-4, batch 16 of 64², quality 10-90 told, one CPU thread; 256 px validation crops at the true quality"),
    ("JPEG, `medium`, told the quality, third schedule (from the one above)", "training/levers/jpeg-lr3e-4.log.json",
     344_688, "lr 3e-4, batch 16 of 64², quality 10-90 told, one CPU thread; 256 px validation crops"),
    ("JPEG, `medium`, told the quality, fourth schedule (from the one above)", "training/jpeg/medium-4.log.json",
     424_688, "lr 3e-4, batch 16 of 64², quality 10-90 told, seed 1, one CPU thread, compiled; 256 px validation "
     "crops"),
    ("JPEG, `medium`, told the quality, fifth schedule (from the one above)", "training/jpeg/medium-5.log.json",
     513_024, "lr 3e-4, batch 16 of 64², quality 10-90 told, seed 2, one CPU thread, compiled; 256 px validation "
     "crops"),
    ("JPEG, `medium`, told the quality, sixth schedule (from the one above)", "training/jpeg/medium-6.log.json",
     614_336, "lr 3e-4, batch 16 of 64², quality 10-90 told, seed 3, one CPU thread, compiled; 256 px validation "
     "crops"),
    ("JPEG, `medium`, told the quality, seventh schedule (from the one above)", "training/jpeg/medium-7.log.json",
     680_768, "lr 3e-4, batch 16 of 64², quality 10-90 told, seed 4, one CPU thread, compiled; 256 px validation "
     "crops"),
    ("JPEG, `medium`, told the quality, eighth schedule (from the one above)", "training/jpeg/medium-8.log.json",
     747_280, "lr 3e-4, batch 16 of 64², quality 10-90 told, seed 5, one CPU thread, compiled, twice the steps; "
     "256 px validation crops"),
    ("JPEG, `medium`, told the quality, ninth schedule (from the one above)", "training/jpeg/medium-9.log.json",
     875_280, "lr 3e-4, batch 16 of 64², quality 10-90 told, seed 7, one CPU thread, compiled, 8,000 steps; "
     "256 px validation crops; shipped as `irae-jpeg-medium`"),
    ("Inpaint, `small-inpaint` from the harmonic fill, CPU", "training/inpaint/small-inpaint.log.json", 0,
     "lr 3e-4, batch 8 of 128², hole-only L1, one CPU thread; 256 px validation crops; "
     "shipped as `irae-inpaint-small`"),
    ("Inpaint, `medium-inpaint` from the harmonic fill, CPU", "training/inpaint/medium-inpaint.log.json", 0,
     "lr 2e-4, batch 8 of 128², hole-only L1, one CPU thread, compiled; 256 px validation crops; not shipped"),
]


def table(title: str, path: Path, before: int, what: str) -> list[str]:
    log = json.loads(path.read_text())
    batch = int(log["config"]["batch_size"])
    # a run stopped by its time budget right after a scheduled validation validates that step again at its end
    vals = list({v["step"]: v for v in log["val"] if v.get("levels")}.values())
    if not vals:
        return []
    levels = list(vals[-1]["levels"])
    first = vals[0]["levels"]
    inputs = " / ".join(f"{first[k].get('input_psnr_rgb_u8', float('nan')):.2f}" for k in levels)
    out = [f"### {title}", "", f"`{path.relative_to(ROOT)}` — {what}. Input: {inputs} dB.", "",
           "| step | patches seen | " + " | ".join(levels) + " |", "|---|---|" + "---|" * len(levels)]
    for v in vals:
        cells = " | ".join(f"{v['levels'][k]['psnr_rgb_u8']:.2f}" if k in v["levels"] else "–" for k in levels)
        out.append(f"| {v['step']:,} | {before + v['step'] * batch:,} | {cells} |")
    return out + [""]


def main() -> int:
    lines = ["# Training curves", "",
             "Validation PSNR (`psnr_rgb_u8`, dB) of the held-out crops during training, from the runs' logs.",
             "These are training-time figures on centre crops (512 px for denoise, 256 px for JPEG and inpaint);",
             "the README's results come from `irae benchmark quality` on the full crops, with the classical rows.",
             "Made by `python scripts/curves.py > docs/training-curves.md`.", ""]
    for title, rel, before, what in RUNS:
        path = ROOT / rel
        if path.is_file():
            lines += table(title, path, before, what)
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
