#!/usr/bin/env bash
# Does a squared-error loss score higher in PSNR than L1 late in training? Two fine-tunes of the same
# weights, same seed and steps, one thread each (run from the repository root).
set -eu
W=${W:-campaign/denoise/medium-cpu5.safetensors}
for loss in l1 l2; do
  OMP_NUM_THREADS=1 irae train --task denoise data/photos/train --arch medium --init-from "$W" --steps 600 \
      --batch-size 16 --lr 5e-5 --loss $loss --inverse-gain 1200 --inverse-probe 1e-5 --inverse-gain-every 4 \
      --compile on --val data/photos/val --val-every 600 --out campaign/denoise/l2-ab/$loss.safetensors --overwrite -q
done
