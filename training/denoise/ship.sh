#!/usr/bin/env bash
# Ship a CPU denoise run as irae-denoise-medium: the quality benchmark (CBM3D and NLM rows, the weights
# it replaces, the CNN comparator and the small model, all in the same run), then the round trip at
# 1 MP (the 16 validation crops) and 4 MP (one sigma-25 crop of each held-out photo). CPU, fp32;
# the quality runs on ONNX Runtime (pinned, so a missing extra fails loudly instead of changing the figures).
#   W=training/denoise/medium-cpu2.safetensors PREVIOUS=training/denoise/previous.safetensors \
#     bash training/denoise/ship.sh
# PREVIOUS: a copy of the weights being replaced. CBM3D takes ~30 CPU-minutes of the run.
set -eu
cd "$(dirname "$0")/../.."
W=${W:?W=weights file to ship}
PREVIOUS=${PREVIOUS:?PREVIOUS=a copy of the weights it replaces}
irae benchmark quality --task denoise data/photos/val --compare "irae-denoise-medium=$W" \
  --compare "previous-irae-denoise-medium=$PREVIOUS" --compare cnn-denoise-medium=cnn-denoise-medium \
  --compare irae-denoise-small=irae-denoise-small --classical cbm3d,nlm --dtype fp32 --device cpu \
  --backend onnxruntime --json training/denoise/quality-ship.json --overwrite
cp "$W" weights/irae-denoise-medium.safetensors
# the new file's sha256 into the registry before anything loads it by path (training/cards.sh rewrites the card)
python -c "from pathlib import Path; from irae_cli.weights import register
register('irae-denoise-medium', Path('weights/irae-denoise-medium.safetensors'), task='denoise', card='irae-denoise-medium.md')"
cp training/denoise/quality-ship.json weights/denoise-medium.quality.json
[ -d training/inv/four-s25 ] || bash -c 'mkdir -p training/inv/four && for p in coldripple eveningglow fallenleaf onestandsout; do
  cp data/photos/val/p-${p}_r0c0.png training/inv/four/; done
  irae degrade --task denoise --sigma 25 --seed 0 training/inv/four training/inv/four-s25 > /dev/null'
irae benchmark invertibility --weights weights/irae-denoise-medium.safetensors data/photos/val --dtype fp32 --size 1024 \
  --device cpu --json weights/irae-denoise-medium.invertibility.json --overwrite
irae benchmark invertibility --weights weights/irae-denoise-medium.safetensors training/inv/four-s25/sigma25 --dtype fp32 \
  --size 2048 --device cpu --json weights/irae-denoise-medium-4mp.invertibility.json --overwrite
