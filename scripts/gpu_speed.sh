#!/usr/bin/env bash
# One prepared device run for the speed issue (#10): model, folder -> folder beside the
# naive loop, and training throughput, all written to $OUT.
#
# Knobs (environment): ARCH (paper-denoise), DEVICE (cuda), SIZE (1024), BATCH (4),
# VAL (photos for the folder run), PACK (training data), TRAIN_STEPS (150), OUT.
# CPU rehearsal: ARCH=tiny DEVICE=cpu SIZE=128 BATCH=1 VAL=tests/data PACK=tests/data \
#   TRAIN_STEPS=5 TRAIN_BATCH=4 scripts/gpu_speed.sh
set -euo pipefail
ARCH=${ARCH:-paper-denoise}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-1024}
BATCH=${BATCH:-4}
VAL=${VAL:-data/photos/val}
PACK=${PACK:-data/packs/train-128.safetensors}
TRAIN_STEPS=${TRAIN_STEPS:-150}
TRAIN_BATCH=${TRAIN_BATCH:-256}
OUT=${OUT:-out/speed}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
irae() { python -m irae_cli "$@"; }
{
  echo "== $(date -u +%FT%TZ) arch=$ARCH device=$DEVICE size=$SIZE batch=$BATCH"
  for dt in fp32 bf16; do
    irae benchmark speed --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" --dtype "$dt" --device "$DEVICE" \
      --json "$OUT/model-$dt.json" --overwrite || true
  done
  irae benchmark speed --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" --dtype bf16 --device "$DEVICE" \
    --channels-last --compile --json "$OUT/model-bf16-compile.json" --overwrite || true
  # folder -> folder, JPEG in, PNG out, beside the naive per-image loop on the same files
  rm -rf /tmp/irae-speed-set
  irae degrade --task jpeg --quality 40 "$VAL" /tmp/irae-speed-set -q
  irae benchmark speed --arch "$ARCH" --folder /tmp/irae-speed-set/q40 --naive --dtype bf16 --device "$DEVICE" \
    --json "$OUT/folder.json" --overwrite || true
  for patch in 64 128; do
    irae train --task denoise "$PACK" --arch "$ARCH" --steps "$TRAIN_STEPS" --patch "$patch" \
      --batch-size "$TRAIN_BATCH" --device "$DEVICE" --out "/tmp/irae-speed-$patch.safetensors" --overwrite -q \
      --log "$OUT/train-$patch.log.json" || true
  done
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/speed.log"
