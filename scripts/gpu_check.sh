#!/usr/bin/env bash
# Runs the CUDA backend's GPU tests (tests/unit/test_cuda_*.cpp) and benchmark (bench_cuda) on a
# machine with an NVIDIA GPU and writes a JSON summary. Bounded to ~8 minutes.
#
#   scripts/gpu_check.sh bundle [BUILD_DIR] [DEST]
#       On the build machine: packs the test and benchmark programs of a CUDA build (default
#       build-cuda) with the shared libraries they need that a bare CUDA machine lacks (oneDNN,
#       libpng, ...; found with ldd) into DEST/diffprobe-gpu-bundle.tar.gz (default
#       BUILD_DIR/gpu_bundle). The CUDA libraries themselves (cudart, cuBLAS, cuDNN, the driver)
#       are not packed: the GPU machine's are used. libstdc++ / libgcc_s go in as a fallback only.
#   scripts/gpu_check.sh run [BUNDLE]
#       On the GPU machine: unpacks a bundle (tarball or folder; default
#       build-cuda/gpu_bundle/diffprobe-gpu-bundle.tar.gz), or takes a CUDA build folder, finds
#       the CUDA libraries (CUDA toolkit, or the nvidia-* Python wheels next to PyTorch), runs every
#       program and writes the summary.
#   scripts/gpu_check.sh build [BUILD_DIR]
#       Where all dependencies are installed: configures (CUDA ON, sm_90), builds the CUDA tests and
#       benchmark, then runs them as above.
#
# Output: $OUT/gpu_check.json when OUT is set, else ./gpu_check.json, with the per-program logs and
# gtest / benchmark JSON beside it (in gpu_check_logs/). Exit status: 0 when every test passed, 1
# when one failed or when no GPU was seen (every GPU test skipped; GPU_CHECK_ALLOW_SKIP=1 accepts
# that), 2 on a usage or setup error.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
programs=(test_cuda_memory test_cuda_ops test_cuda_conv)
bench=bench_cuda
t_start=$SECONDS
budget=${GPU_CHECK_BUDGET:-470}  # seconds for the whole run

die() {
  echo "gpu_check: $*" >&2
  exit 2
}

# ---- bundle -------------------------------------------------------------------------------------

# Libraries any Linux machine has, or that must come from the GPU machine itself.
system_lib() {
  case "$1" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | libresolv.so*) return 0 ;;
    libcuda.so* | libcudart.so* | libcublas.so* | libcublasLt.so* | libcudnn*.so* | libnvrtc*.so* | libnvJitLink*) return 0 ;;
  esac
  return 1
}

do_bundle() {
  local build=${1:-$here/build-cuda}
  local dest=${2:-$build/gpu_bundle}
  [[ -d $build ]] || die "no build folder $build"
  local stage
  stage=$(mktemp -d)
  mkdir -p "$stage/bundle/bin" "$stage/bundle/lib/fallback"
  local bins=()
  for p in "${programs[@]}" "$bench"; do
    local f
    f=$(find "$build" -maxdepth 3 -type f -name "$p" -perm -u+x | head -1)
    [[ -n $f ]] || die "$p is not built in $build (cmake --build $build --target $p)"
    cp "$f" "$stage/bundle/bin/"
    strip --strip-unneeded "$stage/bundle/bin/$p" 2>/dev/null || true
    bins+=("$f")
  done
  # Every shared library the programs load, minus the system and CUDA ones.
  local libs
  libs=$(for f in "${bins[@]}"; do ldd "$f"; done | awk '/=> \// {print $3}' | sort -u)
  for l in $libs; do
    local name
    name=$(basename "$l")
    system_lib "$name" && continue
    case "$name" in
      libstdc++.so* | libgcc_s.so*) cp -L "$l" "$stage/bundle/lib/fallback/$name" ;;
      *) cp -L "$l" "$stage/bundle/lib/$name" ;;
    esac
  done
  cp "$here/scripts/gpu_check.sh" "$stage/bundle/"
  {
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
    echo "commit: $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    for f in "${bins[@]}"; do
      echo "== ldd $(basename "$f")"
      ldd "$f"
    done
  } >"$stage/bundle/manifest.txt"
  mkdir -p "$dest"
  tar -C "$stage" -czf "$dest/diffprobe-gpu-bundle.tar.gz" bundle
  rm -rf "$stage"
  echo "gpu_check: wrote $dest/diffprobe-gpu-bundle.tar.gz ($(du -h "$dest/diffprobe-gpu-bundle.tar.gz" | cut -f1))"
}

# ---- run ----------------------------------------------------------------------------------------

# Folders holding the CUDA runtime, cuBLAS and cuDNN on this machine.
cuda_lib_dirs() {
  local d
  for d in ${CUDNN_LIB_DIR:-} ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 \
    /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    [[ -d $d ]] && echo "$d"
  done
  # PyTorch's CUDA wheels (nvidia-cudnn-cu13, nvidia-cublas, ...) carry the libraries too.
  local py
  for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" - <<'EOF' 2>/dev/null
import site, sys, os
roots = set(site.getsitepackages() + [site.getusersitepackages()] + [p for p in sys.path if p.endswith("-packages")])
for r in roots:
    top = os.path.join(r, "nvidia")
    if not os.path.isdir(top):
        continue
    for dirpath, _, files in os.walk(top):
        if any(f.startswith("lib") and ".so" in f for f in files):  # cudnn, cublas(Lt), nvrtc, ...
            print(dirpath)
EOF
  done
}

remaining() { echo $((budget - (SECONDS - t_start))); }

do_run() {
  local src=${1:-}
  if [[ -z $src ]]; then
    if [[ -f $here/build-cuda/gpu_bundle/diffprobe-gpu-bundle.tar.gz ]]; then
      src=$here/build-cuda/gpu_bundle/diffprobe-gpu-bundle.tar.gz
    else
      src=$here/build-cuda
    fi
  fi
  local root bindir libpath=""
  if [[ -f $src ]]; then
    root=$(mktemp -d)
    tar -C "$root" -xzf "$src" || die "cannot unpack $src"
    root=$root/bundle
  elif [[ -d $src/bundle ]]; then
    root=$src/bundle
  else
    root=$src
  fi
  if [[ -d $root/bin ]]; then
    bindir=$root/bin
    libpath=$root/lib
  else
    bindir=$root  # a build folder: programs are under tests/ and benchmarks/
  fi

  local out=${OUT:-$PWD}
  local logs=$out/gpu_check_logs
  mkdir -p "$logs"
  local dirs
  dirs=$(cuda_lib_dirs | awk '!seen[$0]++' | paste -sd: -)
  export LD_LIBRARY_PATH="${libpath:+$libpath:}${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  find_prog() { find "$bindir" -maxdepth 3 -type f -name "$1" -perm -u+x | head -1; }
  # A system libstdc++ older than the build machine's: use the bundled one.
  local first
  first=$(find_prog "${programs[0]}")
  [[ -n $first ]] || die "no ${programs[0]} under $bindir"
  if [[ -d $libpath/fallback ]] && ldd "$first" 2>&1 | grep -qE "GLIBCXX|CXXABI|GCC_[0-9].*not found|libstdc\+\+.*not found"; then
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$libpath/fallback"
  fi
  ldd "$first" >"$logs/ldd.txt" 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$logs/nvidia-smi.txt" 2>/dev/null ||
    echo "unknown (nvidia-smi failed or is missing)" >"$logs/nvidia-smi.txt"

  local p f rc
  for p in "${programs[@]}"; do
    f=$(find_prog "$p")
    if [[ -z $f ]]; then
      echo "missing" >"$logs/$p.rc"
      continue
    fi
    local left
    left=$(remaining)
    ((left > 60)) || left=60
    echo "gpu_check: $p (timeout ${left}s)"
    timeout "$left" "$f" --gtest_output="json:$logs/$p.json" >"$logs/$p.log" 2>&1
    rc=$?
    echo "$rc" >"$logs/$p.rc"
    tail -3 "$logs/$p.log"
  done

  f=$(find_prog "$bench")
  if [[ -n $f ]] && (($(remaining) > 90)); then
    echo "gpu_check: $bench"
    timeout $(($(remaining) - 30)) "$f" --benchmark_min_time=0.3 --benchmark_out="$logs/$bench.json" \
      --benchmark_out_format=json >"$logs/$bench.log" 2>&1
    echo "$?" >"$logs/$bench.rc"
    grep -E "^BM_" "$logs/$bench.log" || tail -5 "$logs/$bench.log"
  else
    echo "skipped (not built or out of time)" >"$logs/$bench.rc"
  fi

  python3 - "$logs" "$out/gpu_check.json" "$((SECONDS - t_start))" "${programs[@]}" "$bench" <<'EOF'
import json, os, re, sys
logs, dest, elapsed, *progs = sys.argv[1:]
bench = progs.pop()
def read(p, default=""):
    try:
        with open(p) as f: return f.read()
    except OSError: return default
summary = {"device": read(os.path.join(logs, "nvidia-smi.txt")).strip(), "elapsed_s": int(elapsed),
           "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""), "programs": {}, "failed": [],
           "worst_errors": [], "benchmarks": []}
ok = True
for p in progs:
    rc = read(os.path.join(logs, p + ".rc"), "missing").strip()
    entry = {"rc": rc}
    try:
        with open(os.path.join(logs, p + ".json")) as f: g = json.load(f)
        cases = [t for s in g.get("testsuites", []) for t in s.get("testsuite", [])]
        entry.update(tests=len(cases), failures=sum(1 for t in cases if t.get("failures")),
                     skipped=sum(1 for t in cases if t.get("result") == "SKIPPED"), time=g.get("time"))
        for t in cases:
            if t.get("failures"):
                summary["failed"].append({"test": t["classname"] + "." + t["name"],
                                          "messages": [x.get("failure", "")[:2000] for x in t["failures"]]})
    except (OSError, ValueError):
        entry["error"] = "no gtest JSON (crashed or timed out?); see " + p + ".log"
        entry["log_tail"] = read(os.path.join(logs, p + ".log"))[-3000:]
    summary["worst_errors"] += re.findall(r"\[ worst \] (.*)", read(os.path.join(logs, p + ".log")))
    if rc != "0" or entry.get("failures") or "error" in entry: ok = False
    summary["programs"][p] = entry
try:
    with open(os.path.join(logs, bench + ".json")) as f: b = json.load(f)
    keep = ("name", "real_time", "time_unit", "label", "FLOP/s", "bytes/s", "mallocs_per_iter", "error_message")
    summary["benchmarks"] = [{k: x[k] for k in keep if k in x} for x in b.get("benchmarks", [])]
except (OSError, ValueError):
    summary["benchmarks_error"] = read(os.path.join(logs, bench + ".rc")).strip() or "no benchmark JSON"
# A GPU check in which every GPU test skipped saw no GPU: that is a failure, not a pass.
ran = sum(e.get("tests", 0) - e.get("skipped", 0) for e in summary["programs"].values())
summary["tests_run"] = ran
if all(e.get("skipped", 0) >= e.get("tests", 0) - 2 for e in summary["programs"].values() if "tests" in e):
    summary["note"] = "no CUDA device was visible: the GPU tests skipped"
    if os.environ.get("GPU_CHECK_ALLOW_SKIP") != "1": ok = False
summary["ok"] = ok
with open(dest, "w") as f: json.dump(summary, f, indent=2)
print(json.dumps({k: summary[k] for k in ("device", "ok", "tests_run", "failed", "worst_errors", "elapsed_s", "note")
                  if k in summary}, indent=2))
sys.exit(0 if ok else 1)
EOF
}

# ---- build --------------------------------------------------------------------------------------

do_build() {
  local build=${1:-$here/build-gpu}
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFPROBE_WITH_CUDA=ON \
    -DDIFFPROBE_CUDA_ARCHITECTURES=90 -DDIFFPROBE_BUILD_EXAMPLES=OFF -DDIFFPROBE_BUILD_CLI=OFF ||
    die "configure failed (oneDNN, fmt, Eigen, GoogleTest, ... installed? else use 'bundle' + 'run')"
  cmake --build "$build" --target "${programs[@]}" "$bench" || die "build failed"
  do_run "$build"
}

mode=${1:-run}
shift || true
case "$mode" in
  bundle) do_bundle "$@" ;;
  run) do_run "$@" ;;
  build) do_build "$@" ;;
  *) die "usage: $0 bundle [BUILD_DIR] [DEST] | run [BUNDLE_OR_BUILD_DIR] | build [BUILD_DIR]" ;;
esac
