#!/usr/bin/env bash
# Linear probe of a training checkpoint's EMA weights at the study's best setting (t = 10,
# blocks 8 and 9, 8x8 average pooling, all 60,000 training and 10,000 test images, the study's
# LINEAR head arguments), about 3-5 minutes on 2 cores. Used to decide whether a longer-trained
# checkpoint is worth bundling (docs/model.md).
#   tools/train/quick_probe.sh [RUN_DIR|WEIGHTS.safetensors] [BIN]
# RUN_DIR (default tools/train/runs/fmnist): its ckpt.pt's EMA weights; or an exported weights
# file. BIN defaults to build/release/bin/diffprobe.
set -euo pipefail
cd "$(dirname "$0")/../.."
run_dir=${1:-tools/train/runs/fmnist}
bin=${2:-build/release/bin/diffprobe}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The study's own dataset paths, noise seeds and linear-probe arguments (tools/study/study.py).
study() { /usr/bin/python3 -c "import sys; sys.path.insert(0, 'tools/study'); import study; $1"; }
read -r -a linear <<<"$(study "print(' '.join(study.LINEAR))")"
if [[ $run_dir == *.safetensors ]]; then
  weights=$run_dir
else
  weights=$work/w.safetensors
  /usr/bin/python3 tools/train/train_fmnist.py --run-dir "$run_dir" --export "$weights"
fi
for split in train test; do
  read -r img lab seed <<<"$(study "i, l, _, s = study.SPLITS['$split']; print(i, l, s)")"
  "$bin" extract --weights "$weights" --input "$img" --labels "$lab" --t 10 \
    --blocks 8,9 --pool avg:8 --noise-seed "$seed" --batch 64 --threads 2 --out "$work/$split.safetensors"
done
for b in 8 9; do
  "$bin" probe --train "$work/train.safetensors" --test "$work/test.safetensors" --feature t10.b$b \
    --threads 2 "${linear[@]}" --json "$work/b$b.json" >/dev/null 2>&1
  /usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'block $b: top-1 {100*r[\"top1\"]:.2f}%')" "$work/b$b.json"
done
