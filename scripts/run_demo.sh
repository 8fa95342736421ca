#!/usr/bin/env bash
# The main job: the paper's pipeline on the bundled diffusion model and Fashion-MNIST.
#   1. installs what is needed (scripts/setup.sh) and builds the `diffprobe` command (release preset);
#   2. extracts U-Net features of training and test images at the chosen (t, block), pooled;
#   3. trains a linear probe and the paper's attention head on them, evaluates on the test set;
#   4. prints a results table.
# By default it uses a documented subset of the training set (N_TRAIN, default 10000) and the
# full 10,000-image test set so it finishes in well under 20 minutes on 2 cores; --full uses all
# 60,000 training images. The defaults (t = 10, block 9, 8x8 average pooling for the linear probe,
# 4x4 for the attention head) are the best of the study in docs/results.md.
# Environment: N_TRAIN, N_TEST, T, BLOCK, POOL, ATTN_POOL, ATTN_EPOCHS, THREADS, WORK (output dir).
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
t=${T:-10}
block=${BLOCK:-9}
pool=${POOL:-avg:8}
attn_pool=${ATTN_POOL:-avg:4}
attn_epochs=${ATTN_EPOCHS:-15}
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
extract() {  # split n noise-seed pool
  local images=$data/$1-images-idx3-ubyte.gz labels=$data/$1-labels-idx1-ubyte.gz
  "$bin" extract --weights "$model" --input "$images" --labels "$labels" --t "$t" --blocks "$block" --pool "$4" \
    --noise-seed "$3" --batch 64 --threads "$threads" --limit "$2" --out "$work/$1_$2_${feat}_${4/:/}.safetensors"
}
echo "== extract $feat ($pool) of $n_train training and $n_test test images"
extract train "$n_train" 0 "$pool"
extract t10k "$n_test" 1 "$pool"
if [[ $attn_pool != "$pool" ]]; then
  echo "== extract $feat ($attn_pool, for the attention head)"
  extract train "$n_train" 0 "$attn_pool"
  extract t10k "$n_test" 1 "$attn_pool"
fi
files() { echo "--train $work/train_${n_train}_${feat}_${1/:/}.safetensors --test $work/t10k_${n_test}_${feat}_${1/:/}.safetensors"; }

echo "== linear probe ($pool)"
# shellcheck disable=SC2046
"$bin" probe $(files "$pool") --feature "$feat" --head linear --optimizer adamw --lr 1e-3 --schedule cosine \
  --epochs 30 --standardize --threads "$threads" --json "$work/linear.json" --save "$work/linear_head.safetensors"
echo "== attention head ($attn_pool, width 128)"
# shellcheck disable=SC2046
"$bin" probe $(files "$attn_pool") --feature "$feat" --head attention --attention-dim 128 --optimizer adamw --lr 5e-4 \
  --schedule cosine --epochs "$attn_epochs" --threads "$threads" --json "$work/attention.json" \
  --save "$work/attention_head.safetensors"

echo
echo "== results: bundled model ($(python3 -c "import json,struct;f=open('$model','rb');n=struct.unpack('<Q',f.read(8))[0];print('step',json.loads(f.read(n))['__metadata__'].get('step','?'))" 2>/dev/null || echo ?)), Fashion-MNIST test set ($n_test images), feature $feat, $n_train training images"
printf '%-12s %-8s %8s %8s\n' head pooling top-1 top-5
for h in linear attention; do
  p=$pool
  [[ $h == attention ]] && p=$attn_pool
  python3 - "$work/$h.json" "$h" "$p" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<12} {sys.argv[3]:<8} {100 * r['top1']:7.2f}% {100 * r['top5']:7.2f}%")
PY
done
echo "(finished in $((SECONDS / 60)) min $((SECONDS % 60)) s)"
