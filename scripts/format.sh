#!/usr/bin/env bash
# clang-format (style: .clang-format) over the C++ and CUDA sources.
#   bash scripts/format.sh          check only; lists offending files, exits 1 if any
#   bash scripts/format.sh --fix    rewrite the files in place
#   bash scripts/format.sh [--fix] FILE...   only these files
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fix=0
if [[ ${1:-} == --fix ]]; then
  fix=1
  shift
fi
clang_format=${CLANG_FORMAT:-clang-format}
command -v "$clang_format" >/dev/null || { echo "format: $clang_format not found (bash scripts/setup.sh)" >&2; exit 2; }

if (($# > 0)); then
  files=("$@")
else
  dirs=()
  for d in include src kernels tests benchmarks examples; do [[ -d $d ]] && dirs+=("$d"); done
  mapfile -t files < <(find "${dirs[@]}" -type f \( -name '*.hpp' -o -name '*.h' -o -name '*.cpp' \
    -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) | sort)
fi
((${#files[@]} > 0)) || { echo "format: no files"; exit 0; }

if ((fix)); then
  "$clang_format" -i --style=file "${files[@]}"
  echo "format: formatted ${#files[@]} files"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$clang_format" --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]} > 0)); then
  printf 'format: needs clang-format: %s\n' "${bad[@]}"
  echo "format: ${#bad[@]} of ${#files[@]} files differ; run: bash scripts/format.sh --fix" >&2
  exit 1
fi
echo "format: all ${#files[@]} files are clean"
