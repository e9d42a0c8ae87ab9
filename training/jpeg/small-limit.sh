#!/usr/bin/env bash
# Give irae-jpeg-small (blind, not the default) the quality limit the medium models carry, and remeasure
# it as restore runs it: the ungated ladder q 10-95 (kept if present: it must be measured before the limit
# is written, on sha256 5873c8fd...), max_quality from it (scripts/jpeg_quality_limit.py), the benchmark at
# q 10-90 and the round trip at 1 MP (the 16 validation crops) and 4 MP (one q-30 JPEG of each held-out
# photo). CPU, fp32; the quality runs on ONNX Runtime (pinned).
set -eu
cd "$(dirname "$0")/../.."
W=weights/irae-jpeg-small.safetensors
LADDER=10,15,20,25,30,35,40,45,50,55,60,65,70,75,80,85,90,95
[ -f training/jpeg/small-quality-ladder.json ] || irae benchmark quality --task jpeg --quality "$LADDER" \
  data/photos/val --weights "$W" --dtype fp32 --device cpu --backend onnxruntime \
  --json training/jpeg/small-quality-ladder.json
python scripts/jpeg_quality_limit.py "$W" training/jpeg/small-quality-ladder.json --name irae-jpeg-small
python -c "from pathlib import Path; from irae_cli.weights import register
register('irae-jpeg-small', Path('$W'), task='jpeg', default=False, card='irae-jpeg-small.md')"
irae benchmark quality --task jpeg --quality 10,20,30,40,50,60,70,80,90 data/photos/val --weights "$W" \
  --dtype fp32 --device cpu --backend onnxruntime --json weights/irae-jpeg-small.quality.json --overwrite
irae benchmark invertibility --weights "$W" data/photos/val --dtype fp32 --size 1024 --device cpu \
  --json weights/irae-jpeg-small.invertibility.json --overwrite
bash training/inv/four-q30.sh
irae benchmark invertibility --weights "$W" training/inv/four-q30/q30 --dtype fp32 --size 2048 --device cpu \
  --json training/inv/irae-jpeg-small-4mp.json --overwrite
