#!/usr/bin/env bash
# One prepared device run for the speed table: the model alone (fp32, bf16, bf16 + channels_last +
# compile), folder -> folder (JPEG in, PNG out) beside the naive loop on the same files, and
# training patches/s at 64 and 128 px.
#
#   scripts/gpu_speed.sh
#
# Every step has a time cap and none stops the others; the plan printed first sums the caps and
# the script refuses to start when they exceed LIMIT_S (600 s). With the defaults:
# 60 + 60 + 120 + 40 + 90 + 2 x 75 + 4 x 5 = 540 s (9.0 min); SMOKE=1 adds the smoke check first
# (then lower a cap: the sum must stay within LIMIT_S). PLAN_ONLY=1 prints the plan and stops.
#
# Carry (data/ is git-ignored; name these in the device call's `carry`):
#   carry: ["data/packs/train-128.safetensors", "data/photos/val"]
#     data/packs/train-128.safetensors  40.0 MiB  (training throughput)
#     data/photos/val                    5.2 MiB  (the folder run: 16 photos, 4.1 MP, degraded to JPEG
#                                                  q40 and copied FOLDER_COPIES times: 25 = 102 MP)
#   The preflight names anything missing; steps that need it are skipped, the others run.
#
# Batches are sized to the card: 256 patches of 128 px through paper-denoise with the inverse-gain
# pass hold ~119 GiB of activations (an estimate: ~0.46 GiB a patch), more than an H100 or H200
# has, so the defaults are 128 patches at 64 px and 32 at 128 px (~15 GiB each), and training
# halves its batch on out-of-memory anyway (the log's oom_halvings says so).
#
# $OUT (at most 8 files of 16 MiB come back): speed.log (live) and speed.tar.gz.part00
# (model-*.json, folder.json, train-*.log.json, smoke.json, a manifest): 2 files, which leaves room
# for a lease run's 5 in the same $OUT. Take them apart here with
#   python scripts/lease_out.py unpack FILES_AT out/speed
#
# Knobs (environment): ARCH (paper-denoise), DEVICE (cuda), SIZE (1024), BATCH (4), VAL, PACK,
# FOLDER_COPIES (25), TRAIN_STEPS (150), TRAIN_BATCH_64 (128), TRAIN_BATCH_128 (32), SMOKE (0),
# SMOKE_S (150), OUT (out/speed), WORK (/tmp/irae-speed), PY (python3), PLAN_ONLY.
# CPU rehearsal at tiny scale (the carry paths in place):
#   ARCH=tiny DEVICE=cpu SIZE=128 BATCH=1 FOLDER_COPIES=1 TRAIN_STEPS=5 TRAIN_BATCH_64=4 TRAIN_BATCH_128=2 \
#     OUT=/tmp/fake-out scripts/gpu_speed.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-paper-denoise}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-1024}
BATCH=${BATCH:-4}
VAL=${VAL:-data/photos/val}
PACK=${PACK:-data/packs/train-128.safetensors}
FOLDER_COPIES=${FOLDER_COPIES:-25}
TRAIN_STEPS=${TRAIN_STEPS:-150}
TRAIN_BATCH_64=${TRAIN_BATCH_64:-128}
TRAIN_BATCH_128=${TRAIN_BATCH_128:-32}
SMOKE=${SMOKE:-0}
SMOKE_S=${SMOKE_S:-150}
OUT=${OUT:-out/speed}
WORK=${WORK:-/tmp/irae-speed}
NAME=speed
source scripts/lease_lib.sh
SET=$WORK.set  # the JPEG folder stays outside $WORK: it is input, not a result

[ "$SMOKE" = 1 ] && plan_line "smoke check" $((SMOKE_S + 20))
plan_line "model fp32" 60
plan_line "model bf16" 60
plan_line "model bf16 compile" 120
plan_line "degrade folder" 40
plan_line "folder + naive" 90
plan_line "train 64 px" 75
plan_line "train 128 px" 75
plan_line "packing (4 times)" 20
if [ "${PLAN_ONLY:-0}" = 1 ]; then plan_check; exit 0; fi
mkdir -p "$OUT"
rm -rf "$WORK" "$SET" && mkdir -p "$WORK"
{
  echo "== $(date -u +%FT%TZ) arch=$ARCH device=$DEVICE size=$SIZE batch=$BATCH out=$OUT work=$WORK"
  plan_check
  preflight "$PACK" "$VAL"
  if [ "$SMOKE" = 1 ]; then
    step smoke $((SMOKE_S + 20)) "$PY" scripts/gpu_smoke.py --device "$DEVICE" --budget "$SMOKE_S" --val "$VAL" \
      --json "$WORK/smoke.json"
  fi
  for dt in fp32 bf16; do
    step "model $dt" 60 "$PY" -m irae_cli benchmark speed --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" \
      --dtype "$dt" --device "$DEVICE" --json "$WORK/model-$dt.json" --overwrite
  done
  step "model bf16 compile" 120 "$PY" -m irae_cli benchmark speed --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" \
    --dtype bf16 --device "$DEVICE" --channels-last --compile --json "$WORK/model-bf16-compile.json" --overwrite
  publish
  # folder -> folder, JPEG in, PNG out (both runs), beside the naive per-image loop on the same files
  if need "folder" "$VAL"; then
    step "degrade folder" 40 "$PY" -m irae_cli degrade --task jpeg --quality 40 "$VAL" "$SET/one" -q
    for i in $(seq 1 "$FOLDER_COPIES"); do
      mkdir -p "$SET/big/c$i" && cp -l "$SET"/one/q40/*.jpg "$SET/big/c$i/" 2>/dev/null \
        || cp "$SET"/one/q40/*.jpg "$SET/big/c$i/" 2>/dev/null
    done
    step "folder + naive" 90 "$PY" -m irae_cli benchmark speed --arch "$ARCH" --folder "$SET/big" --naive \
      --dtype bf16 --device "$DEVICE" --json "$WORK/folder.json" --overwrite
    publish
  fi
  for patch in 64 128; do
    batch=$([ "$patch" = 64 ] && echo "$TRAIN_BATCH_64" || echo "$TRAIN_BATCH_128")
    if need "train $patch px" "$PACK"; then
      step "train $patch px" 75 "$PY" -m irae_cli train --task denoise "$PACK" --arch "$ARCH" --steps "$TRAIN_STEPS" \
        --minutes 1 --patch "$patch" --batch-size "$batch" --device "$DEVICE" --checkpoint-every 0 \
        --out "$SET/train-$patch.safetensors" --log "$WORK/train-$patch.log.json" --overwrite -q
    fi
  done
  rm -rf "$SET"
  summary
  publish
  "$PY" scripts/lease_out.py check "$OUT"
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/$NAME.log"
