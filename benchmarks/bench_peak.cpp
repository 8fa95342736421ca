// The machine's fp32 FMA limit, measured (BENCHMARK.md; the loop is in fma_peak.hpp), in GFLOP/s.
// "Fraction of peak" figures in docs/performance.md are taken against this number.
//   bench_peak [--threads=1,2]
#include <benchmark/benchmark.h>
#include <omp.h>

#include <string>
#include <string_view>
#include <vector>

#include "cli/parse_list.hpp"  // the CLI's comma-separated lists
#include "fma_peak.hpp"

using namespace diffprobe::bench;

namespace {

void BM_fma_peak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    sink[static_cast<std::size_t>(omp_get_thread_num())] = fma_loop(static_cast<float>(omp_get_thread_num()));
    benchmark::DoNotOptimize(sink.data());
  }
  const double flop = fma_loop_flop() * threads;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.SetLabel(lanes() == 16 ? "avx512" : lanes() == 8 ? "avx2" : "scalar");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads{1, 2};
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--threads=")) {
      threads = diffprobe::cli::parse_int_list(std::string(a.substr(10)), "--threads");
    } else {
      rest.push_back(argv[i]);
    }
  }
  for (int t : threads)
    benchmark::RegisterBenchmark(("fma_peak/threads:" + std::to_string(t)).c_str(), BM_fma_peak)
        ->Arg(t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
