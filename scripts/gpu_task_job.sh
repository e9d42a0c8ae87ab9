#!/usr/bin/env bash
# A time-boxed GPU job that makes shipping weights for one task (denoise | jpeg | inpaint):
#
#   scripts/gpu_task_job.sh TASK
#
# 1. the smoke check (scripts/gpu_smoke.py: every CUDA-only path once, one line each, <= SMOKE_S s);
# 2. trains the IRAE preset and the non-invertible comparator on the same data with the same recipe
#    and wall-clock budget (MINUTES each);
# 3. `irae benchmark quality` of both on the held-out photos, `irae benchmark invertibility` of IRAE,
#    and a model card for each.
# Every step has a time cap and none stops the others; the plan printed first sums the caps and
# the script refuses to start when they exceed JOB_LIMIT_S (default 600 s, for a job runner that
# kills a job at 10 minutes). With the defaults: 170 + 2 x 122 + 90 + 40 + 20 + 5 x 3 = 579 s
# (9.6 min); PLAN_ONLY=1 prints the plan and stops.
#
# Inputs. data/ is git-ignored, so copy these to the GPU machine beside the checkout:
#   inputs: ["data/packs/train-128.safetensors", "data/photos/val"]
#     data/packs/train-128.safetensors  40.0 MiB  python -m irae_cli.pack data/photos/train \
#                                                  -o data/packs/train-128.safetensors --crop 128 --max-mib 40
#     data/photos/val                    5.2 MiB  16 crops of 640x400 (scripts/fetch_photos.py)
#   With the code (~3.5 MiB) that is ~49 MiB. The preflight names anything missing; steps that need
#   it are skipped, the others run.
#
# Results. The job works in $WORK and packs it into $OUT after every step in a few files of bounded
# size (scripts/pack_results.py, limits from RESULTS_MAX_FILES / RESULTS_MAX_FILE_MIB /
# RESULTS_MAX_MIB, by default 8 files of <= 16 MiB, 64 MiB together; a job cut short keeps the last
# complete pack):
#   job-TASK.log                 the whole console log (live)
#   job-TASK.tar.gz.part00..     weights, checkpoints (~21 MiB each for paper presets), train logs,
#                                quality/invertibility JSON, sheet, cards, smoke.json and a manifest
#                                (every file's size and sha256, anything left out); <= 4 parts
#   = at most 5 files (a paper-size rehearsal: 5 files, 49 MiB). Take them apart here with:
#     python scripts/pack_results.py unpack RESULTS out/job
#
# Knobs (environment): MINUTES per model (1.2), PACK, VAL, ARCH / CNN (presets), DEVICE (cuda),
# EXTRA (more train flags), SMOKE (1 = run the smoke check first), the caps SMOKE_S (150; the
# step gets 20 s more), QUALITY_S (90), INVERT_S (40), CLASSICAL (the quality run's classical rows:
# all, none or names; all = what is installed there, e.g. NLM through OpenCV, CBM3D only where the
# bm3d package is), JOB_LIMIT_S (600), OUT (out/job), WORK (/tmp/irae-job-TASK), PY (python3),
# PLAN_ONLY (1 = print the plan only).
# CPU rehearsal at tiny scale (the inputs in place; two CPU cores score SSIM and run the
# classical methods far slower, hence QUALITY_S and CLASSICAL):
#   ARCH=tiny CNN=cnn-tiny MINUTES=0.2 DEVICE=cpu EXTRA="--patch 32 --batch-size 8" SMOKE_S=100 \
#     QUALITY_S=200 CLASSICAL=none OUT=/tmp/job-rehearsal scripts/gpu_task_job.sh denoise
set -uo pipefail
cd "$(dirname "$0")/.."
TASK=${1:?usage: scripts/gpu_task_job.sh denoise|jpeg|inpaint}
MINUTES=${MINUTES:-1.2}
PACK=${PACK:-data/packs/train-128.safetensors}
VAL=${VAL:-data/photos/val}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
SMOKE=${SMOKE:-1}
SMOKE_S=${SMOKE_S:-150}
QUALITY_S=${QUALITY_S:-90}
INVERT_S=${INVERT_S:-40}
CLASSICAL=${CLASSICAL:-all}
OUT=${OUT:-out/job}
WORK=${WORK:-/tmp/irae-job-$TASK}
NAME=job-$TASK
case $TASK in
  denoise) ARCH=${ARCH:-paper-denoise}; LEVELS="--sigma 15,25,50" ;;
  jpeg)    ARCH=${ARCH:-paper-denoise}; LEVELS="--quality 10,20,30,40" ;;
  inpaint) ARCH=${ARCH:-paper-inpaint}; LEVELS="--mask box,strokes" ;;
  *) echo "unknown task $TASK" >&2; exit 2 ;;
esac
CNN=${CNN:-cnn}
source scripts/gpu_job_lib.sh
TRAIN_S=$("$PY" -c "print(int(float('$MINUTES') * 60) + 50)")  # + start-up, final validation and save

[ "$SMOKE" = 1 ] && plan_line "smoke check" $((SMOKE_S + 20))
plan_line "train $ARCH" "$TRAIN_S"
plan_line "train $CNN" "$TRAIN_S"
plan_line "benchmark quality" "$QUALITY_S"
plan_line "benchmark invertibility" "$INVERT_S"
plan_line "model cards" 20
plan_line "packing (5 times)" 15
if [ "${PLAN_ONLY:-0}" = 1 ]; then plan_check; exit 0; fi
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
{
  echo "== $(date -u +%FT%TZ) task=$TASK arch=$ARCH cnn=$CNN minutes=$MINUTES device=$DEVICE out=$OUT work=$WORK"
  plan_check
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  preflight "$PACK" "$VAL"
  if [ "$SMOKE" = 1 ]; then
    step smoke $((SMOKE_S + 20)) "$PY" scripts/gpu_smoke.py --device "$DEVICE" --budget "$SMOKE_S" --val "$VAL" \
      --json "$WORK/smoke.json"
    publish
  fi
  for model in "$ARCH" "$CNN"; do
    name=$([ "$model" = "$CNN" ] && echo "cnn-$TASK" || echo "irae-$TASK")
    if need "train $name" "$PACK" "$VAL"; then
      step "train $name" "$TRAIN_S" "$PY" -m irae_cli train --task "$TASK" "$PACK" --arch "$model" \
        --minutes "$MINUTES" --val "$VAL" --device "$DEVICE" --out "$WORK/$name.safetensors" --overwrite -q $EXTRA
      publish
    fi
  done
  if need "benchmark quality" "$VAL" "$WORK/irae-$TASK.safetensors" "$WORK/cnn-$TASK.safetensors"; then
    step "benchmark quality" "$QUALITY_S" "$PY" -m irae_cli benchmark quality --task "$TASK" $LEVELS "$VAL" --device "$DEVICE" \
      --dtype fp32 --weights "$WORK/irae-$TASK.safetensors" --compare "cnn=$WORK/cnn-$TASK.safetensors" \
      --classical "$CLASSICAL" --json "$WORK/quality-$TASK.json" --sheet "$WORK/sheet-$TASK.png" --overwrite
  fi
  if need "benchmark invertibility" "$VAL" "$WORK/irae-$TASK.safetensors"; then
    # exit 1 = above the fp32 tolerance: a result, recorded in the JSON
    step "benchmark invertibility" "$INVERT_S" "$PY" -m irae_cli benchmark invertibility --weights "$WORK/irae-$TASK.safetensors" \
      "$VAL" --dtype fp32 --size 1024 --device "$DEVICE" --json "$WORK/invertibility-$TASK.json" --overwrite
  fi
  publish
  for name in "irae-$TASK" "cnn-$TASK"; do
    if need "card $name" "$WORK/$name.safetensors" "$WORK/quality-$TASK.json"; then
      inv=()
      [ "$name" = "irae-$TASK" ] && [ -e "$WORK/invertibility-$TASK.json" ] && inv=(--invertibility "$WORK/invertibility-$TASK.json")
      step "card $name" 10 "$PY" scripts/model_card.py "$WORK/$name.safetensors" --name "$name" \
        --quality "$WORK/quality-$TASK.json" "${inv[@]}" \
        --train-command "MINUTES=$MINUTES scripts/gpu_task_job.sh $TASK" -o "$WORK/$name.md"
    fi
  done
  summary
  publish
  "$PY" scripts/pack_results.py check "$OUT"
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/$NAME.log"
