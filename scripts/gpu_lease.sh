#!/usr/bin/env bash
# One prepared device run for shipping weights (issues #7 denoise, #8 jpeg, #9 inpaint).
#
#   scripts/gpu_lease.sh TASK
#
# Trains the IRAE preset and the non-invertible comparator on the same data with the
# same recipe and the same wall-clock budget, then evaluates both with
# `irae benchmark quality` on the held-out photos and IRAE with
# `irae benchmark invertibility`.  Everything lands in $OUT (the device tool fetches
# it); logs are tee'd so a run cut short still leaves them.
#
# Knobs (environment): MINUTES per model (3), PACK (training pack or folder), VAL
# (held-out photos), ARCH / CNN (presets), DEVICE (cuda), EXTRA (more train flags),
# OUT (./out/lease).  A CPU rehearsal at tiny scale:
#   ARCH=tiny CNN=cnn-tiny MINUTES=0.2 DEVICE=cpu VAL=tests/data PACK=tests/data \
#     EXTRA="--patch 32 --batch-size 8" scripts/gpu_lease.sh denoise
set -euo pipefail
TASK=${1:?usage: scripts/gpu_lease.sh denoise|jpeg|inpaint}
MINUTES=${MINUTES:-3}
PACK=${PACK:-data/packs/train-128.safetensors}
VAL=${VAL:-data/photos/val}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
OUT=${OUT:-out/lease}
export PYTHONPATH=${PYTHONPATH:-.}${PYTHONPATH:+}
export PYTHONUNBUFFERED=1
case $TASK in
  denoise) ARCH=${ARCH:-paper-denoise}; LEVELS="--sigma 15,25,50" ;;
  jpeg)    ARCH=${ARCH:-paper-denoise}; LEVELS="--quality 10,20,30,40" ;;
  inpaint) ARCH=${ARCH:-paper-inpaint}; LEVELS="--mask box,strokes" ;;
  *) echo "unknown task $TASK" >&2; exit 2 ;;
esac
CNN=${CNN:-cnn}
mkdir -p "$OUT"
irae() { python -m irae_cli "$@"; }
{
  echo "== $(date -u +%FT%TZ) task=$TASK arch=$ARCH cnn=$CNN minutes=$MINUTES device=$DEVICE"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  for model in "$ARCH" "$CNN"; do
    name=$([ "$model" = "$CNN" ] && echo "cnn-$TASK" || echo "irae-$TASK")
    irae train --task "$TASK" "$PACK" --arch "$model" --minutes "$MINUTES" --val "$VAL" \
      --device "$DEVICE" --out "$OUT/$name.safetensors" --overwrite -q $EXTRA
  done
  irae benchmark quality --task "$TASK" $LEVELS "$VAL" --device "$DEVICE" --dtype fp32 \
    --weights "$OUT/irae-$TASK.safetensors" --compare "cnn=$OUT/cnn-$TASK.safetensors" \
    --json "$OUT/quality-$TASK.json" --sheet "$OUT/sheet-$TASK.png" --overwrite
  irae benchmark invertibility --weights "$OUT/irae-$TASK.safetensors" "$VAL" --dtype fp32 \
    --size 1024 --device "$DEVICE" --json "$OUT/invertibility-$TASK.json" --overwrite || true
  for name in "irae-$TASK" "cnn-$TASK"; do
    python scripts/model_card.py "$OUT/$name.safetensors" --name "$name" --quality "$OUT/quality-$TASK.json" \
      $([ "$name" = "irae-$TASK" ] && echo --invertibility "$OUT/invertibility-$TASK.json") \
      --train-command "MINUTES=$MINUTES scripts/gpu_lease.sh $TASK" -o "$OUT/$name.md" || true
  done
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/lease-$TASK.log"
