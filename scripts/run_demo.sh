#!/usr/bin/env bash
# The main job: the paper's pipeline on the bundled diffusion model and Fashion-MNIST.
#   1. installs what is needed (scripts/setup.sh) and builds the `diffprobe` command (release preset);
#   2. extracts U-Net features of training and test images at the chosen (t, block), pooled;
#   3. trains a linear probe and the paper's attention head on them, evaluates on the test set;
#   4. prints a results table.
# By default it uses a documented subset of the training set (N_TRAIN, default 10000) and the
# full 10,000-image test set so it finishes in well under 20 minutes on 2 cores; --full uses all
# 60,000 training images. Environment: N_TRAIN, N_TEST, T, BLOCK, POOL, THREADS, WORK (output dir).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

full=0
for a in "$@"; do
  case "$a" in
    --full) full=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done

n_train=${N_TRAIN:-10000}
((full)) && n_train=60000
n_test=${N_TEST:-10000}
t=${T:-50}
block=${BLOCK:-12}
pool=${POOL:-avg:2}
threads=${THREADS:-$(nproc)}
work=${WORK:-build/demo}
data=/usr/share/datasets/fashion-mnist
model=models/fmnist_default.safetensors

echo "== setup and build"
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target diffprobe_cli -j "$(nproc)"
bin=build/release/bin/diffprobe
mkdir -p "$work"

echo "== the bundled model"
"$bin" info --weights "$model" | sed -n '1,3p'

feat=t${t}.b${block}
echo "== extract $feat ($pool) of $n_train training and $n_test test images"
"$bin" extract --weights "$model" --input "$data/train-images-idx3-ubyte.gz" --labels "$data/train-labels-idx1-ubyte.gz" \
  --t "$t" --blocks "$block" --pool "$pool" --noise-seed 0 --batch 64 --threads "$threads" --limit "$n_train" \
  --out "$work/train_${n_train}_${feat}.safetensors"
"$bin" extract --weights "$model" --input "$data/t10k-images-idx3-ubyte.gz" --labels "$data/t10k-labels-idx1-ubyte.gz" \
  --t "$t" --blocks "$block" --pool "$pool" --noise-seed 1 --batch 64 --threads "$threads" --limit "$n_test" \
  --out "$work/test_${n_test}_${feat}.safetensors"

echo "== linear probe"
"$bin" probe --train "$work/train_${n_train}_${feat}.safetensors" --test "$work/test_${n_test}_${feat}.safetensors" \
  --feature "$feat" --head linear --optimizer adamw --lr 1e-3 --schedule cosine --epochs 30 --standardize \
  --threads "$threads" --json "$work/linear.json" --save "$work/linear_head.safetensors"
echo "== attention head"
"$bin" probe --train "$work/train_${n_train}_${feat}.safetensors" --test "$work/test_${n_test}_${feat}.safetensors" \
  --feature "$feat" --head attention --attention-dim 128 --optimizer adamw --lr 5e-4 --schedule cosine --epochs 15 \
  --threads "$threads" --json "$work/attention.json" --save "$work/attention_head.safetensors"

echo
echo "== results: bundled model ($(python3 -c "import json,struct;f=open('$model','rb');n=struct.unpack('<Q',f.read(8))[0];print('step',json.loads(f.read(n))['__metadata__'].get('step','?'))" 2>/dev/null || echo ?)), Fashion-MNIST test set ($n_test images), feature $feat pooled $pool, $n_train training images"
printf '%-12s %8s %8s\n' head top-1 top-5
for h in linear attention; do
  python3 - "$work/$h.json" "$h" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<12} {100 * r['top1']:7.2f}% {100 * r['top5']:7.2f}%")
PY
done
