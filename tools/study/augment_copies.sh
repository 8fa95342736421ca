#!/usr/bin/env bash
# Does training the linear probe on K augmented copies per image (the paper's training
# augmentation: guided-diffusion's random_crop_arr + horizontal flip, `extract --augment adm`)
# change it? The bundled model on Fashion-MNIST at the demo's cell (block 9, t = 10, 8x8 pooling),
# the demo's probe recipe (AdamW 1e-3, cosine, 30 epochs, standardised); the augmented run trains
# epoch e on copy e mod K, so both runs take the same number of steps.
# Environment: BIN (default build/release/bin/diffprobe), N_TRAIN (10000), COPIES (4),
# THREADS (all cores), WORK (build/augment_study). Prints a table and writes WORK/result.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-build/release/bin/diffprobe}
n_train=${N_TRAIN:-10000}
copies=${COPIES:-4}
threads=${THREADS:-$(nproc)}
work=${WORK:-build/augment_study}
data=/usr/share/datasets/fashion-mnist
model=models/fmnist_default.safetensors
[[ -x $bin ]] || { echo "no $bin: build it (cmake --preset release && cmake --build --preset release)" >&2; exit 2; }
mkdir -p "$work"

extract() {  # split limit noise-seed out [extra flags...]
  local split=$1 limit=$2 seed=$3 out=$4
  shift 4
  "$bin" extract --weights "$model" --input "$data/$split-images-idx3-ubyte.gz" \
    --labels "$data/$split-labels-idx1-ubyte.gz" --t 10 --blocks 9 --pool avg:8 --noise-seed "$seed" \
    --batch 64 --threads "$threads" --limit "$limit" --out "$out" "$@"
}
probe() {  # train json
  "$bin" probe --train "$1" --test "$work/test.safetensors" --feature t10.b9 --head linear --optimizer adamw \
    --lr 1e-3 --schedule cosine --epochs 30 --standardize --threads "$threads" --json "$2"
}

start=$SECONDS
extract t10k 10000 1 "$work/test.safetensors"
extract train "$n_train" 0 "$work/train_plain.safetensors"
t_plain=$SECONDS
extract train "$n_train" 0 "$work/train_aug${copies}.safetensors" --augment adm --copies "$copies" --augment-seed 0
t_aug=$SECONDS
probe "$work/train_plain.safetensors" "$work/plain.json"
probe "$work/train_aug${copies}.safetensors" "$work/aug.json"
/usr/bin/python3 - "$work" "$n_train" "$copies" "$((t_aug - t_plain))" "$((SECONDS - start))" <<'PY'
import json, sys
work, n, k, t_aug, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
plain = json.load(open(f"{work}/plain.json"))
aug = json.load(open(f"{work}/aug.json"))
print(f"linear probe, block 9, t = 10, 8x8 pooling, {n} training images, Fashion-MNIST test set")
print(f"{'training features':<40} {'top-1':>8} {'top-5':>8}")
print(f"{'un-augmented':<40} {100 * plain['top1']:7.2f}% {100 * plain['top5']:7.2f}%")
print(f"{f'{k} augmented copies (one per epoch)':<40} {100 * aug['top1']:7.2f}% {100 * aug['top5']:7.2f}%")
print(f"(extracting the {k} copies took {t_aug} s; everything {total} s)")
json.dump({"n_train": n, "copies": k, "plain": plain, "augmented": aug, "extract_copies_s": t_aug,
           "total_s": total}, open(f"{work}/result.json", "w"), indent=1)
PY
