// The machine's fp32 FMA limit, measured (BENCHMARK.md): a register-only loop of 12 independent
// accumulators (enough to hide the FMA latency on two pipes) on every thread, in GFLOP/s
// (2 FLOP per lane per FMA). AVX-512 where the CPU has it, else AVX2+FMA, else scalar.
// "Fraction of peak" figures in docs/performance.md are taken against this number.
//   bench_peak [--threads=1,2]
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <string>
#include <string_view>
#include <vector>

#include "cli/parse_list.hpp"  // the CLI's comma-separated lists

namespace {

constexpr long kIters = 1L << 22;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) float fma_loop_avx512(float seed) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed + static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < kIters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);  // (not _mm512_reduce_add_ps: GCC 12's header warns inside it)
  float r = 0;
  for (float v : out) r += v;
  return r;
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(float seed) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(seed + static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < kIters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  alignas(32) float out[8];
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_store_ps(out, s);
  float r = 0;
  for (float v : out) r += v;
  return r;
}
#endif

int lanes() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 1;
}

float fma_loop(float seed) {
#if defined(__x86_64__)
  if (lanes() == 16) return fma_loop_avx512(seed);
  if (lanes() == 8) return fma_loop_avx2(seed);
#endif
  float acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = seed + static_cast<float>(i);
  for (long it = 0; it < kIters; ++it)
    for (float& x : acc) x = x * 0.999999f + 1e-7f;
  float r = 0;
  for (float x : acc) r += x;
  return r;
}

void BM_fma_peak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    sink[static_cast<std::size_t>(omp_get_thread_num())] = fma_loop(static_cast<float>(omp_get_thread_num()));
    benchmark::DoNotOptimize(sink.data());
  }
  const double flop = 2.0 * 12 * lanes() * static_cast<double>(kIters) * threads;
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
