#!/usr/bin/env bash
# A time-boxed GPU job: training first (it is what a CPU cannot buy), the smoke check beside it, the
# speed table on the then idle card last; the results packed into a few files.
#
#   OUT=DIR bash scripts/gpu_job.sh   (on the GPU machine, from the checkout; it ends by DEADLINE,
#                                      ~580 s, inside a JOB_LIMIT_S of 600 s)
#
# 1. At once, in the background, five training runs share the card for TRAIN_MIN minutes each, each
#    with `--compile on` (the whole step compiled and captured in CUDA graphs after its 3 timed eager
#    steps; ~1 minute of compiling, so the default 9 minutes give >= 8 at full speed):
#    denoise   `medium` from DENOISE_INIT (the latest shipped weights), batch 128;
#    jpeg      `medium` from JPEG_INIT, told each patch's quality (JPEG_CONDITION, as the default
#              JPEG model is: a conditioned --init-from cannot train blind), batch 128;
#    inpaint   `medium-inpaint` from INPAINT_INIT, 96 px patches (positions within the 128 px crops
#              of the pack), batch 32;
#    (an empty *_INIT starts that run fresh: identity start for inpaint, data start otherwise)
#    and the same-recipe pair for the invertible-vs-not question, both fresh, same steps:
#    cmp-irae  `medium`, cmp-cnn `cnn-medium` (>= medium's parameter count), batch 64, CMP_STEPS.
#    Beside them, scripts/gpu_smoke.py (every CUDA-only path once, the CUDA tests included).
# 2. When they end: the speed table with the card to itself, step by step until DEADLINE s after the
#    start: the model alone (medium, paper-denoise; fp32, bf16, bf16 compiled), folder -> folder
#    beside the naive loop on a >= 100 MP JPEG set, training patches/s at 64 px eager and compiled in
#    one run (`irae benchmark speed --train --compile`: graph breaks, host syncs per step) and 128 px.
# Results are packed into $OUT after each phase (scripts/pack_results.py; <= RESULTS_MAX_FILES
# files, 8 by default); a job cut short keeps the training results. Unpack here with
#   python scripts/pack_results.py unpack RESULTS out/job
#
# Inputs (git-ignored, so copy them to the GPU machine beside the checkout; the tracked tree is
# ~19 MiB):
#   inputs: ["data/packs/train-128.safetensors", "data/photos/val"]
#     python -m irae_cli.pack data/photos/train -o data/packs/train-128.safetensors --crop 128 --max-mib 36
#
# Knobs (environment): TRAIN_MIN (9), CMP_STEPS (4000), JOB_LIMIT_S (600), DEADLINE (JOB_LIMIT_S - 25), DEVICE
# (cuda), PACK, VAL, DENOISE_INIT (weights/irae-denoise-medium.safetensors), JPEG_INIT
# (weights/irae-jpeg-medium.safetensors), JPEG_CONDITION (quality; none = blind), INPAINT_INIT (empty: a fresh
# identity start), SMOKE_S (150), FOLDER_COPIES (25), OUT (out/job), WORK (/tmp/irae-job), PY. CPU rehearsal at tiny scale:
#   DEVICE=cpu TRAIN_MIN=1 CMP_STEPS=40 DEADLINE=420 FOLDER_COPIES=1 SPEED_SIZE=128 SMALL=1 SMOKE_S=60 \
#     DENOISE_INIT=TINY JPEG_INIT=TINY INPAINT_INIT= OUT=/tmp/job-rehearsal scripts/gpu_job.sh
#   (TINY: any `irae train --arch tiny` output)
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
TRAIN_MIN=${TRAIN_MIN:-9}
CMP_STEPS=${CMP_STEPS:-4000}
DEADLINE=${DEADLINE:-$((${JOB_LIMIT_S:-600} - 25))}  # the last steps and the final pack fit in the rest
PACK=${PACK:-data/packs/train-128.safetensors}
VAL=${VAL:-data/photos/val}
DENOISE_INIT=${DENOISE_INIT-weights/irae-denoise-medium.safetensors}
JPEG_INIT=${JPEG_INIT-weights/irae-jpeg-medium.safetensors}
JPEG_CONDITION=${JPEG_CONDITION:-quality}
INPAINT_INIT=${INPAINT_INIT-}
SMOKE_S=${SMOKE_S:-150}
FOLDER_COPIES=${FOLDER_COPIES:-25}
SPEED_SIZE=${SPEED_SIZE:-1024}
SMALL=${SMALL:-0}  # 1 = the rehearsal: tiny batches and patch sizes
OUT=${OUT:-out/job}
WORK=${WORK:-/tmp/irae-job}
NAME=job
source scripts/gpu_job_lib.sh
SCRATCH=$WORK.scratch  # what is not worth bringing back (the comparators' checkpoints, the JPEG set)

if [ "$SMALL" = 1 ]; then B64=4; B32=2; BCMP=4; P64=32; P128=64; ARCH_A=tiny; ARCH_I=tiny; ARCH_C=cnn-tiny
  SMOKE_ARGS=(--arch tiny)
else B64=128; B32=32; BCMP=64; P64=64; P128=96; ARCH_A=medium; ARCH_I=medium-inpaint; ARCH_C=cnn-medium
  SMOKE_ARGS=(); fi

left() { echo $((DEADLINE - SECONDS)); }
capped() {  # capped NAME WANT_S CMD...: a step capped at WANT_S and at what is left before DEADLINE
  local name=$1 want=$2 l
  shift 2
  l=$(($(left) - 5))
  if [ "$l" -lt 15 ]; then
    echo "== skip $name: ${l} s left before the deadline"
    STEPS_DONE+=("$name: skipped (deadline)")
    return 0
  fi
  step "$name" $((want < l ? want : l)) "$@"
}

PIDS=()
NAMES=()
train_bg() {  # train_bg NAME ARGS...: one background run, console in $WORK/NAME.out
  local name=$1
  shift
  # two threads each: the card does the work, and five runs share the host's cores with the smoke check
  OMP_NUM_THREADS=2 timeout -s TERM -k 30 $(( $("$PY" -c "print(int(float('$TRAIN_MIN') * 60))") + 90 )) \
    "$PY" -m irae_cli train "$PACK" --device "$DEVICE" --minutes "$TRAIN_MIN" --val "$VAL" -q --compile on \
    --log "$WORK/$name.log.json" --overwrite "$@" >"$WORK/$name.out" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}

mkdir -p "$OUT"
rm -rf "$WORK" "$SCRATCH" && mkdir -p "$WORK" "$SCRATCH"
{
  echo "== $(date -u +%FT%TZ) device=$DEVICE train_min=$TRAIN_MIN cmp_steps=$CMP_STEPS deadline=${DEADLINE}s"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  preflight "$PACK" "$VAL" $DENOISE_INIT $JPEG_INIT $INPAINT_INIT
  init() { [ -n "$1" ] && echo "--init-from $1"; }

  # 1. training (five runs) and the smoke check, together
  if need "training" "$PACK" "$VAL" $DENOISE_INIT $JPEG_INIT $INPAINT_INIT; then
    train_bg denoise --task denoise --arch "$ARCH_A" $(init "$DENOISE_INIT") --batch-size "$B64" --patch "$P64" \
      --lr 5e-4 --val-every 500 --checkpoint-every 500 --out "$WORK/irae-denoise-medium.safetensors"
    train_bg jpeg --task jpeg --arch "$ARCH_A" $(init "$JPEG_INIT") --condition "$JPEG_CONDITION" \
      --batch-size "$B64" --patch "$P64" \
      --lr 5e-4 --val-every 500 --checkpoint-every 500 --out "$WORK/irae-jpeg-medium.safetensors"
    train_bg inpaint --task inpaint --arch "$ARCH_I" $(init "$INPAINT_INIT") --batch-size "$B32" --patch "$P128" \
      --lr 3e-4 --val-crop 256 --val-every 500 --checkpoint-every 500 --out "$WORK/irae-inpaint-medium.safetensors"
    for pair in "cmp-irae:$ARCH_A" "cmp-cnn:$ARCH_C"; do
      train_bg "${pair%%:*}" --task denoise --arch "${pair#*:}" --batch-size "$BCMP" --patch "$P64" --lr 5e-4 \
        --steps "$CMP_STEPS" --val-every 500 --checkpoint-every 0 --checkpoint "$SCRATCH/${pair%%:*}.ckpt.safetensors" \
        --out "$WORK/${pair%%:*}.safetensors"
    done
    echo "== training: ${NAMES[*]} started $(date -u +%T) (pids ${PIDS[*]})"
  fi
  step smoke $((SMOKE_S + 30)) "$PY" scripts/gpu_smoke.py --device "$DEVICE" --budget "$SMOKE_S" --val "$VAL" \
    --json "$WORK/smoke.json" "${SMOKE_ARGS[@]}"
  publish
  for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}"
    rc=$?
    echo "== training ${NAMES[$i]}: rc $rc at ${SECONDS} s; $(tail -n 2 "$WORK/${NAMES[$i]}.out" | tr '\n' ' ')"
    STEPS_DONE+=("train ${NAMES[$i]}: rc $rc")
  done
  nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null || true
  publish

  # 2. the speed table, most wanted first, until DEADLINE
  for arch in "$ARCH_A" paper-denoise; do
    [ "$SMALL" = 1 ] && [ "$arch" = paper-denoise ] && arch=small
    for dt in bf16 fp32; do
      capped "model $arch $dt" 40 "$PY" -m irae_cli benchmark speed --arch "$arch" --size "$SPEED_SIZE" --batch-size 4 \
        --dtype "$dt" --device "$DEVICE" --json "$WORK/model-$arch-$dt.json" --overwrite
    done
    if [ "$arch" = "$ARCH_A" ]; then
      # folder -> folder, JPEG in, PNG out, beside the naive per-image loop on the same files
      capped "degrade folder" 30 "$PY" -m irae_cli degrade --task jpeg --quality 40 "$VAL" "$SCRATCH/one" -q
      for i in $(seq 1 "$FOLDER_COPIES"); do
        mkdir -p "$SCRATCH/big/c$i" && cp -l "$SCRATCH"/one/q40/*.jpg "$SCRATCH/big/c$i/" 2>/dev/null \
          || cp "$SCRATCH"/one/q40/*.jpg "$SCRATCH/big/c$i/" 2>/dev/null
      done
      capped "folder + naive" 80 "$PY" -m irae_cli benchmark speed --arch "$arch" --folder "$SCRATCH/big" --naive \
        --dtype bf16 --device "$DEVICE" --json "$WORK/folder.json" --overwrite
      # the default 4 I/O threads per pool held the H200 run to 25.6 MP/s: the same folder with more
      capped "folder, 12 I/O threads" 40 "$PY" -m irae_cli benchmark speed --arch "$arch" --folder "$SCRATCH/big" \
        --workers 12 --dtype bf16 --device "$DEVICE" --json "$WORK/folder-j12.json" --overwrite
      capped "train 64 px, eager and compiled" 150 "$PY" -m irae_cli benchmark speed --arch "$arch" --train \
        --compile --size "$P64" --batch-size $((B64 * 2)) --repeats 20 --device "$DEVICE" \
        --json "$WORK/train-64.json" --overwrite
      publish
      capped "model $arch bf16 compile" 90 "$PY" -m irae_cli benchmark speed --arch "$arch" --size "$SPEED_SIZE" \
        --batch-size 4 --dtype bf16 --device "$DEVICE" --channels-last --compile \
        --json "$WORK/model-$arch-bf16-compile.json" --overwrite
    fi
  done
  capped "train 128 px" 45 "$PY" -m irae_cli train --task denoise "$PACK" --arch "$ARCH_A" --steps 80 --minutes 1 \
    --patch "$((P64 * 2))" --batch-size "$((B32 * 2))" --device "$DEVICE" --checkpoint-every 0 \
    --out "$SCRATCH/t128.safetensors" --log "$WORK/train-128.log.json" --overwrite -q
  rm -rf "$SCRATCH"
  summary
  publish
  "$PY" scripts/pack_results.py check "$OUT"
  echo "== done $(date -u +%FT%TZ), ${SECONDS} s"
} 2>&1 | tee "$OUT/$NAME.log"
