#!/usr/bin/env bash
# Ship a CPU JPEG run as irae-jpeg-medium: the ungated quality ladder (beside the weights it replaces),
# the quality limit from it, the shipped benchmark (q 10-90, what restore writes) and the round trip at
# 1 MP (the 16 validation crops) and 4 MP (one q-30 JPEG of each held-out photo). CPU, fp32;
# the quality runs on ONNX Runtime (pinned, so a missing extra fails loudly instead of changing the figures).
#   W=training/jpeg/medium-2.safetensors PREVIOUS=training/jpeg/previous.safetensors bash training/jpeg/ship.sh
# PREVIOUS: a copy of the weights being replaced (default: the old irae-jpeg-small), for the same-run rows.
set -eu
cd "$(dirname "$0")/../.."
W=${W:-training/jpeg/medium-identity.safetensors}
PREVIOUS=${PREVIOUS:-irae-jpeg-small}
PREV_NAME=${PREV_NAME:-irae-jpeg-small}
LADDER=10,15,20,25,30,35,40,45,50,55,60,65,70,75,80,85,90,95
irae benchmark quality --task jpeg --quality "$LADDER" data/photos/val --weights "$W" \
  --compare "$PREV_NAME=$PREVIOUS" --dtype fp32 --device cpu --backend onnxruntime \
  --json training/jpeg/quality-ladder.json --overwrite
python scripts/jpeg_quality_limit.py "$W" training/jpeg/quality-ladder.json --name "$(basename "$W" .safetensors)" \
  --out weights/irae-jpeg-medium.safetensors
# the new file's sha256 into the registry before anything loads it by path (training/cards.sh rewrites the card)
python -c "from pathlib import Path; from irae_cli.weights import register
register('irae-jpeg-medium', Path('weights/irae-jpeg-medium.safetensors'), task='jpeg', card='irae-jpeg-medium.md')"
irae benchmark quality --task jpeg --quality 10,20,30,40,50,60,70,80,90 data/photos/val \
  --weights weights/irae-jpeg-medium.safetensors --compare "$PREV_NAME=$PREVIOUS" --dtype fp32 --device cpu \
  --backend onnxruntime --json weights/jpeg-medium.quality.json --overwrite
irae benchmark invertibility --weights weights/irae-jpeg-medium.safetensors data/photos/val --dtype fp32 --size 1024 \
  --device cpu --json weights/irae-jpeg-medium.invertibility.json --overwrite
bash training/inv/four-q30.sh
irae benchmark invertibility --weights weights/irae-jpeg-medium.safetensors training/inv/four-q30/q30 --dtype fp32 \
  --size 2048 --device cpu --json weights/irae-jpeg-medium-4mp.invertibility.json --overwrite
