#!/usr/bin/env bash
# The 8-bit invertibility criterion on the shipped IRAE weights: 16 validation crops at 1 MP
# (the model cards' JSON) and one noisy crop of each held-out photo at 4 MP.
set -u
D=training/inv
mkdir -p $D/four
for p in coldripple eveningglow fallenleaf onestandsout; do cp data/photos/val/p-${p}_r0c0.png $D/four/; done
[ -d $D/four-s25 ] || irae degrade --task denoise --sigma 25 --seed 0 $D/four $D/four-s25 > /dev/null
for w in irae-denoise-small irae-denoise-small-unbounded; do   # irae-jpeg-small: training/jpeg/small-limit.sh
  OMP_NUM_THREADS=1 irae benchmark invertibility --weights $w data/photos/val --dtype fp32 --size 1024 --device cpu \
      --json weights/$w.invertibility.json --overwrite > $D/$w-1mp.txt
  OMP_NUM_THREADS=1 irae benchmark invertibility --weights $w $D/four-s25/sigma25 --dtype fp32 --size 2048 \
      --device cpu --json $D/$w-4mp.json --overwrite > $D/$w-4mp.txt
done
