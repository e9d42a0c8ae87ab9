#!/usr/bin/env bash
# The inverse-gain table: `small` trained with the same recipe and number of steps under different
# --inverse-gain bounds, then scored for quality (sigma 15/25/50) and for the 8-bit round trip.
# Run from the repository root; needs data/photos (scripts/fetch_photos.py).
set -u
STEPS=${STEPS:-1200}
for g in ${GAINS:-0 250 1000 4000}; do
  OMP_NUM_THREADS=1 irae train --task denoise data/photos/train --arch small --steps "$STEPS" \
    --batch-size 16 --inverse-gain "$g" --val data/photos/val --val-every 0 --val-crop 256 \
    --out "training/gain/small-g$g.safetensors" --overwrite -q
done
[ -d training/gain/val-s25 ] || irae degrade --task denoise --sigma 25 --seed 0 data/photos/val training/gain/val-s25 > /dev/null
for g in ${GAINS:-0 250 1000 4000}; do
  OMP_NUM_THREADS=1 irae benchmark invertibility --weights "training/gain/small-g$g.safetensors" \
    training/gain/val-s25/sigma25 --size 1024 --device cpu --json "training/gain/small-g$g.inv.json" --overwrite > /dev/null
done
