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
data=/usr/share/datasets/fashion-mnist
if [[ $run_dir == *.safetensors ]]; then
  cp "$run_dir" "$work/w.safetensors"
else
  /usr/bin/python3 tools/train/train_fmnist.py --run-dir "$run_dir" --export "$work/w.safetensors"
fi
for split in train test; do
  if [ $split = train ]; then img=train-images-idx3-ubyte.gz lab=train-labels-idx1-ubyte.gz seed=0
  else img=t10k-images-idx3-ubyte.gz lab=t10k-labels-idx1-ubyte.gz seed=1; fi
  "$bin" extract --weights "$work/w.safetensors" --input "$data/$img" --labels "$data/$lab" --t 10 \
    --blocks 8,9 --pool avg:8 --noise-seed $seed --batch 64 --threads 2 --out "$work/$split.safetensors"
done
for b in 8 9; do
  "$bin" probe --train "$work/train.safetensors" --test "$work/test.safetensors" --feature t10.b$b \
    --threads 2 --head linear --optimizer adamw --lr 1e-3 --schedule cosine --epochs 30 --standardize \
    --json "$work/b$b.json" >/dev/null 2>&1
  /usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'block $b: top-1 {100*r[\"top1\"]:.2f}%')" "$work/b$b.json"
done
