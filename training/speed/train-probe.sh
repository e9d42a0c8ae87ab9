#!/usr/bin/env bash
# Training speed of `medium` under the fine inverse-gain probe (--inverse-probe 1e-5), one thread, compiled:
# fp32 throughout (the campaign's runs until now) against bf16 coupling nets for the loss with the probe's
# passes in fp32, each probed every 2nd and every 4th step. Run from the repository root beside at most one
# other single-thread job; MODES picks some of them.
set -eu
D=training/speed
W=${W:-training/denoise/medium-cpu5.safetensors}
for mode in ${MODES:-fp32-every2 fp32-every4 bf16-every2 bf16-every4}; do
  dtype=${mode%-*}; every=${mode#*-every}
  OMP_NUM_THREADS=1 irae train --task denoise data/photos/train --arch medium --init-from "$W" --steps 200 \
      --batch-size 16 --lr 1e-4 --inverse-gain 1200 --inverse-probe 1e-5 --inverse-gain-every "$every" \
      --dtype "$dtype" --compile on --log-every 20 --out $D/probe-$mode.safetensors --overwrite -q
done
python - <<'PY'
import json
from pathlib import Path
for m in ("fp32-every2", "fp32-every4", "bf16-every2", "bf16-every4"):
    if not Path(f"training/speed/probe-{m}.log.json").is_file():
        continue
    iv = json.load(open(f"training/speed/probe-{m}.log.json"))["intervals"]
    iv = [i for i in iv if i["step"] > 60]  # after the compile (step 4) and its slow first steps
    print(m, "patches/s", round(sum(i["patches_per_s"] for i in iv) / len(iv), 1))
PY
