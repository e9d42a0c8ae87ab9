#!/usr/bin/env bash
# Every CPU path of restore's model call, each run beside the eager fp32 baseline:
#   eager torch fp32 / bf16 coupling nets, ONNX Runtime fp32, compiled torch fp32 / bf16.
# Run from the repository root on an otherwise idle machine; TAG names the CPU (e.g. intel-amx).
set -eu
D=training/speed/${TAG:?set TAG to a short name of the CPU}
mkdir -p "$D"
lscpu | grep -v -E "^(Vulnerability|BogoMIPS|NUMA|Hypervisor|Virtualization)" > "$D/lscpu.txt"
for threads in 1 2; do
  for w in "--weights irae-denoise-medium" "--arch paper-denoise"; do
    name=$(echo "$w" | awk '{print $2}' | sed 's/irae-denoise-//')
    common="$w --size 512 --batch-size 1 --repeats 10 --warmup 2 --device cpu --baseline --overwrite"
    OMP_NUM_THREADS=$threads irae benchmark speed $common --backend torch,onnxruntime --dtype fp32,auto \
        --json "$D/$name-t$threads-eager.json"
    OMP_NUM_THREADS=$threads irae benchmark speed $common --dtype fp32,auto --compile \
        --json "$D/$name-t$threads-compiled.json"
  done
done
# folder -> folder (16 PNG photos of 640x400), the restore pipeline beside the naive loop, both threads
for b in auto torch; do
  irae benchmark speed --weights irae-denoise-medium --folder data/photos/val --naive --device cpu --backend $b --repeats 3 \
      --json "$D/folder-$b.json" --overwrite
done
