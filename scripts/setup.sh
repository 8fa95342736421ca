#!/usr/bin/env bash
# Installs everything diffprobe needs to build, test, benchmark and train, from Debian (bookworm)
# packages. Idempotent and quiet: when every package is already installed it touches nothing;
# `apt-get update` runs only when the package lists are missing or stale. Needs root (or sudo)
# only when something is missing.
set -euo pipefail

packages=(
  cmake ninja-build g++                   # toolchain
  libdnnl-dev                             # oneDNN: convolutions and matmuls
  ocl-icd-opencl-dev                      # oneDNN's CMake config requires OpenCL (a Recommends only)
  libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  zlib1g-dev libpng-dev libjpeg-dev       # checkpoints (zip) and images
  libssl-dev                              # SHA-256 of weights files and feature-file parts (libcrypto)
  libopenmpi-dev openmpi-bin              # sharded extraction under mpirun (tests run 2 ranks)
  iproute2                                # the two-host MPI test (network namespaces + veth)
  python3 python3-torch python3-numpy python3-matplotlib python3-pil  # reference model, parity data, training, plots
  python3-skimage                         # real photographs (astronaut, chelsea, ...) for the preprocessing tests
  libopenblas0-pthread                    # a fast BLAS for the PyTorch baseline
  linux-perf time                         # benchmarks: profile_forward.py (perf), large_probe.py (/usr/bin/time)
  dataset-fashion-mnist                   # the bundled model's data set
  clang-format
  pybind11-dev python3-dev python3-pytest python3-setuptools python3-wheel python3-venv python3-pip  # the Python module (src/python), its tests and pip install
  clang libclang-rt-14-dev libomp-dev llvm lld  # fuzz preset: clang, libFuzzer + sanitizer runtimes, its OpenMP, tools CMake records
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages are installed"
  exit 0
fi
echo "setup: installing ${missing[*]}"

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup: missing packages (${missing[*]}) and neither root nor sudo is available" >&2
  exit 1
fi
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The lists are "needed" when apt does not know a missing package or has no lists at all.
need_update=0
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  need_update=1
else
  for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
      need_update=1
      break
    fi
  done
fi
if ((need_update)); then
  "${apt[@]}" update >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
fi

if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
  # Stale lists (a 404 on a superseded version) are the usual cause: refresh once and retry.
  if ((need_update == 0)) && "${apt[@]}" update >"$log" 2>&1 &&
    "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    :
  else
    cat "$log" >&2
    echo "setup: apt-get install failed" >&2
    exit 1
  fi
fi

for p in "${missing[@]}"; do
  installed "$p" || { echo "setup: $p is still not installed" >&2; exit 1; }
done
echo "setup: done"
