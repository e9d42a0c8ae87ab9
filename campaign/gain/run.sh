#!/usr/bin/env bash
# The inverse-gain table: `small` trained with the same recipe and number of steps under different
# --inverse-gain bounds, then scored for quality (sigma 15/25/50) and for the 8-bit round trip.
# Run from the repository root; needs data/photos (scripts/fetch_photos.py).
set -u
STEPS=${STEPS:-1200}
for g in ${GAINS:-0 250 1000 4000}; do
  OMP_NUM_THREADS=1 irae train --task denoise data/photos/train --arch small --steps "$STEPS" \
    --batch-size 16 --inverse-gain "$g" --val data/photos/val --val-every 0 --val-crop 256 \
    --out "campaign/gain/small-g$g.safetensors" --overwrite -q
done
[ -d campaign/gain/val-s25 ] || irae degrade --task denoise --sigma 25 --seed 0 data/photos/val campaign/gain/val-s25 > /dev/null
for g in ${GAINS:-0 250 1000 4000}; do
  OMP_NUM_THREADS=1 irae benchmark invertibility --weights "campaign/gain/small-g$g.safetensors" \
    campaign/gain/val-s25/sigma25 --size 1024 --device cpu --json "campaign/gain/small-g$g.inv.json" --overwrite > /dev/null
done
