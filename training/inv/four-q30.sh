#!/usr/bin/env bash
# The 4 MP round-trip set of the JPEG models: one q-30 JPEG of a crop of each held-out photo
# (training/inv/four-q30/q30), made once.
set -eu
cd "$(dirname "$0")/../.."
[ -d training/inv/four-q30 ] && exit 0
mkdir -p training/inv/four
for p in coldripple eveningglow fallenleaf onestandsout; do cp data/photos/val/p-${p}_r0c0.png training/inv/four/; done
irae degrade --task jpeg --quality 30 --seed 0 training/inv/four training/inv/four-q30 > /dev/null
