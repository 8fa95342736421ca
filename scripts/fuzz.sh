#!/usr/bin/env bash
# The libFuzzer targets of tests/fuzz (docs/fuzzing.md), built by the `fuzz` preset (clang,
# ASan + UBSan) into build/fuzz.
#   bash scripts/fuzz.sh [SECONDS]   build if needed, write the seeds, then run every target for
#                                    SECONDS (default 60) on its seeds, the committed regression
#                                    inputs and its corpus so far (build/fuzz/corpus/<target>)
#   bash scripts/fuzz.sh --replay    run every committed regression input once
# Fails (exit 1) when a target reports a finding: a crash, a sanitizer report, a leak, an
# exception other than diffprobe::Error, a timeout (-timeout), or too much memory (-rss_limit_mb,
# -malloc_limit_mb); the reproducer lands in build/fuzz/artifacts/<target>/, the log in
# build/fuzz/logs/<target>.log. Ends with one summary line, "fuzz: ...".
# Environment: FUZZ_TARGETS (space-separated names, default all), JOBS (build; default nproc),
# FUZZ_NICE (niceness of the runs, default 0), FUZZ_TIMEOUT (per input, default 10 s),
# FUZZ_RSS_MB (default 2048).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=run
seconds=60
case ${1:-} in
  --replay) mode=replay ;;
  '') ;;
  *[!0-9]* | 0) echo "usage: scripts/fuzz.sh [SECONDS] | --replay" >&2; exit 2 ;;
  *) seconds=$1 ;;
esac

build=build/fuzz
bin=$build/fuzz
jobs=${JOBS:-$(nproc)}
per_input=${FUZZ_TIMEOUT:-10}
rss=${FUZZ_RSS_MB:-2048}
nice_level=${FUZZ_NICE:-0}

[[ -f $build/build.ninja ]] || cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" | { grep -v '^\[' || true; }

if [[ -n ${FUZZ_TARGETS:-} ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cd tests/fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//' | grep -v '^fuzz_common$')
fi

# Seeds: small valid files from the library's writers and from PyTorch / NumPy, rewritten when a
# generator changed.
seeds=$build/seeds
if [[ $mode == run ]] && { [[ ! -f $seeds/.stamp ]] || [[ $bin/fuzz_make_seeds -nt $seeds/.stamp ]] ||
  [[ tests/fuzz/make_seeds.py -nt $seeds/.stamp ]]; }; then
  rm -rf "$seeds"
  "$bin/fuzz_make_seeds" "$seeds"
  /usr/bin/python3 tests/fuzz/make_seeds.py "$seeds" >/dev/null
  touch "$seeds/.stamp"
fi

max_len_of() {
  case $1 in
    fuzz_unet_load) echo 1048576 ;;  # the smallest U-Net (32 channels: GroupNorm's 32 groups) is 0.8 MB
    *) echo 65536 ;;
  esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:allocator_may_return_null=0:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1
mkdir -p "$build/logs"
failed=()
total_runs=0
for t in "${targets[@]}"; do
  [[ -x $bin/$t ]] || { echo "fuzz: no target $bin/$t" >&2; failed+=("$t(missing)"); continue; }
  regress=tests/fuzz/regressions/$t
  log=$build/logs/$t.$mode.log
  mkdir -p "$build/artifacts/$t"
  flags=(-max_len="$(max_len_of "$t")" -rss_limit_mb="$rss" -malloc_limit_mb="$rss" -timeout="$per_input"
    -artifact_prefix="$build/artifacts/$t/" -print_final_stats=1)
  rc=0
  if [[ $mode == replay ]]; then
    inputs=()
    [[ -d $regress ]] && mapfile -t inputs < <(find "$regress" -type f | sort)
    if ((${#inputs[@]} == 0)); then
      echo "fuzz: $t: no regression inputs"
      continue
    fi
    # Files as arguments: each runs once, no mutation.
    nice -n "$nice_level" "$bin/$t" "${flags[@]}" "${inputs[@]}" >"$log" 2>&1 || rc=$?
    total_runs=$((total_runs + ${#inputs[@]}))
    if ((rc == 0)); then
      echo "fuzz: $t: ${#inputs[@]} regression inputs replayed"
    fi
  else
    corpus=$build/corpus/$t
    mkdir -p "$corpus"
    dirs=("$corpus")
    [[ -d $seeds/$t ]] && dirs+=("$seeds/$t")
    [[ -d $regress ]] && dirs+=("$regress")
    timeout --signal=INT --kill-after=60 $((seconds + 120)) \
      nice -n "$nice_level" "$bin/$t" "${flags[@]}" -max_total_time="$seconds" "${dirs[@]}" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" || true)
    total_runs=$((total_runs + ${runs:-0}))
    if ((rc == 0)); then
      echo "fuzz: $t: ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-no stats}"
    fi
  fi
  if ((rc != 0)); then
    failed+=("$t")
    echo "fuzz: $t: FINDING (exit $rc); log $log, reproducer in $build/artifacts/$t/" >&2
    grep -E 'ERROR: |runtime error: |SUMMARY: |uncaught exception|terminate called|what\(\)' "$log" | head -5 >&2 || true
  fi
done

if ((${#failed[@]} > 0)); then
  echo "fuzz: $mode: ${#failed[@]} of ${#targets[@]} targets FAILED: ${failed[*]} ($total_runs runs)"
  exit 1
fi
echo "fuzz: $mode: ${#targets[@]} targets passed ($total_runs runs)"
