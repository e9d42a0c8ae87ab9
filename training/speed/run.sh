#!/usr/bin/env bash
# CPU speed figures for the fast path (issue-free: run from the repository root on an idle machine).
set -u
D=training/speed
irae benchmark speed --arch paper-denoise --size 512 --batch-size 1 --device cpu --dtype auto --baseline \
    --repeats 3 --warmup 1 --json $D/paper-denoise-auto.json --overwrite
irae benchmark speed --arch paper-denoise --size 512 --batch-size 1 --device cpu --dtype auto --compile \
    --repeats 3 --warmup 1 --json $D/paper-denoise-auto-compile.json --overwrite
irae benchmark speed --weights irae-denoise-small --size 512 --batch-size 1 --device cpu --dtype auto --baseline \
    --repeats 3 --warmup 1 --json $D/small-auto.json --overwrite
for mode in before after; do
  if [ $mode = before ]; then extra="--dtype fp32 --inverse-gain-every 1"; else extra=""; fi
  irae train --task denoise data/photos/train --arch small --steps 120 --batch-size 16 --log-every 20 \
      --inverse-gain 250 $extra --out $D/train-$mode.safetensors --overwrite -q
done
python - <<'PY'
import json
for m in ("before", "after"):
    iv = json.load(open(f"training/speed/train-{m}.log.json"))["intervals"][2:]
    print(m, "patches/s", round(sum(i["patches_per_s"] for i in iv) / len(iv), 1))
PY
