#!/usr/bin/env bash
# Builds and tests everything, as CI does:
#   1. scripts/setup.sh (packages; a no-op when all are installed)
#   2. preset "default": configure, then scripts/check_setup.sh (everything CMake found and every
#      Python module the scripts import comes from a package setup.sh installs), build, every test
#   3. preset "sanitize": ASan + UBSan build, the fast tests only (labels slow, parity and install
#      are left out: they take minutes even without sanitizers and add no memory-safety coverage)
#   4. preset "fuzz": the libFuzzer targets (clang, ASan + UBSan; docs/fuzzing.md): configure,
#      check the setup, build, replay the committed regression inputs, run every target FUZZ_SECONDS
# Ends with ctest's summary of both runs; exits non-zero on any build or test failure.
# Environment: JOBS (default: nproc), TEST_TIMEOUT (seconds per test, default 600),
# SKIP_SANITIZE=1 to stop after the default preset.
# SKIP_FUZZ=1 to leave out the fuzz preset, FUZZ_SECONDS (per fuzz target, default 20).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs=${JOBS:-$(nproc)}
timeout=${TEST_TIMEOUT:-600}
logs=build/test-logs
status=0
summaries=()

bash scripts/setup.sh
mkdir -p "$logs"

# Runs ctest for a preset; keeps going on failure so both summaries are printed.
run_ctest() {
  local preset=$1
  shift
  local rc=0
  ctest --preset "$preset" -j "$jobs" --timeout "$timeout" --output-on-failure "$@" 2>&1 | tee "$logs/ctest-$preset.log" ||
    rc=$?
  local line
  line=$(grep -E '^[0-9]+% tests passed' "$logs/ctest-$preset.log" | tail -1 || true)
  summaries+=("$preset: ${line:-no summary (ctest exited with $rc)}")
  ((rc == 0)) || status=1
}

echo "== default: configure, check the setup, build (-j$jobs), test"
cmake --preset default
bash scripts/check_setup.sh build/default
cmake --build --preset default -j "$jobs"
run_ctest default

if [[ ${SKIP_SANITIZE:-0} != 1 ]]; then
  echo "== sanitize (ASan + UBSan): configure, build (-j$jobs), fast tests"
  cmake --preset sanitize
  bash scripts/check_setup.sh build/sanitize
  cmake --build --preset sanitize -j "$jobs"
  run_ctest sanitize
fi

if [[ ${SKIP_FUZZ:-0} != 1 ]]; then
  echo "== fuzz (libFuzzer, ASan + UBSan): configure, build (-j$jobs), replay the regressions, each target ${FUZZ_SECONDS:-20} s"
  cmake --preset fuzz
  bash scripts/check_setup.sh build/fuzz
  cmake --build --preset fuzz -j "$jobs"
  fuzz_rc=0
  { JOBS=$jobs bash scripts/fuzz.sh --replay && JOBS=$jobs bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"; } 2>&1 |
    tee "$logs/fuzz.log" || fuzz_rc=$?
  summaries+=("fuzz: $(grep -E '^fuzz: (replay|run):' "$logs/fuzz.log" | sed 's/^fuzz: //' | paste -sd ';' - || true)")
  ((fuzz_rc == 0)) || status=1
fi

echo "== summary"
for s in "${summaries[@]}"; do echo "$s"; done
exit "$status"
