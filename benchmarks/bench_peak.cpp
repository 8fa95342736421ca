// The machine's compute limits, measured (BENCHMARK.md; the loops are in fma_peak.hpp), in
// G(FL)OP/s: fp32 FMA, and where the CPU has the instructions, bf16 (AVX512_BF16 vdpbf16ps) and
// int8 (AVX512_VNNI vpdpbusd) dot products. "Fraction of peak" figures in docs/performance.md
// are taken against the limit of the precision that ran.
//   bench_peak [--threads=1,2] [--kinds=fp32,bf16,int8]
// A kind the CPU lacks is reported as skipped with its reason, not measured.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "cli/parse_list.hpp"  // the CLI's comma-separated lists
#include "fma_peak.hpp"

using namespace diffprobe::bench;

namespace {

void BM_peak(benchmark::State& state, PeakKind kind) {
  if (!peak_supported(kind)) {
    state.SkipWithError(kind == PeakKind::BF16 ? "this CPU has no AVX512_BF16"
                                               : "this CPU has no AVX512_VNNI");
    return;
  }
  const int threads = static_cast<int>(state.range(0));
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    sink[static_cast<std::size_t>(omp_get_thread_num())] =
        peak_loop(kind, static_cast<float>(omp_get_thread_num()));
    benchmark::DoNotOptimize(sink.data());
  }
  const double flop = peak_loop_flop(kind) * threads;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  if (kind == PeakKind::FP32)
    state.SetLabel(lanes() == 16 ? "avx512" : lanes() == 8 ? "avx2" : "scalar");
  else
    state.SetLabel(kind == PeakKind::BF16 ? "avx512_bf16 vdpbf16ps" : "avx512_vnni vpdpbusd (int8 OP/s)");
}

PeakKind parse_kind(const std::string& s) {
  if (s == "fp32") return PeakKind::FP32;
  if (s == "bf16") return PeakKind::BF16;
  if (s == "int8") return PeakKind::INT8;
  throw diffprobe::ArgumentError("bench_peak", "--kinds: '" + s + "' is not fp32, bf16 or int8");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads{1, 2};
  std::vector<PeakKind> kinds{PeakKind::FP32, PeakKind::BF16, PeakKind::INT8};
  std::vector<char*> rest{argv[0]};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view a = argv[i];
      if (a.starts_with("--threads=")) {
        threads = diffprobe::cli::parse_int_list(std::string(a.substr(10)), "--threads");
      } else if (a.starts_with("--kinds=")) {
        kinds.clear();
        for (const auto& k : diffprobe::cli::split(std::string(a.substr(8)))) kinds.push_back(parse_kind(k));
      } else {
        rest.push_back(argv[i]);
      }
    }
  } catch (const diffprobe::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  for (PeakKind k : kinds)
    for (int t : threads) {
      // fp32 keeps its old name, which scripts read
      const std::string name =
          (k == PeakKind::FP32 ? std::string("fma") : std::string(peak_kind_name(k)) + "_dot") +
          "_peak/threads:" + std::to_string(t);
      benchmark::RegisterBenchmark(name.c_str(), BM_peak, k)
          ->Arg(t)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
