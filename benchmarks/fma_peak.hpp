#pragma once
// The machine's fp32 FMA limit (BENCHMARK.md): a register-only loop of 12 independent accumulators
// (enough to hide the FMA latency on two pipes) on every thread, 2 FLOP per lane per FMA.
// AVX-512 where the CPU has it, else AVX2+FMA, else scalar. Shared by bench_peak (the number on
// its own) and bench_unet (the same number measured next to each timed pass, see there).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace diffprobe::bench {

inline constexpr long kIters = 1L << 22;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) inline float fma_loop_avx512(float seed) {
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

__attribute__((target("avx2,fma"))) inline float fma_loop_avx2(float seed) {
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

inline int lanes() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 1;
}

inline float fma_loop(float seed) {
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

/// FLOP of one fma_loop call on one thread.
inline double fma_loop_flop() { return 2.0 * 12 * lanes() * static_cast<double>(kIters); }

/// The limit on `threads` threads right now, GFLOP/s: the median of `calls` timed runs of the
/// loop on every thread (~7 ms each with AVX-512 at 3.4 GHz).
inline double fma_peak_gflops(int threads, int calls) {
  std::vector<double> rates;
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (int c = 0; c < calls; ++c) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    sink[static_cast<std::size_t>(omp_get_thread_num())] = fma_loop(static_cast<float>(omp_get_thread_num()));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(fma_loop_flop() * threads / s / 1e9);
  }
  volatile float keep = sink[0];  // the loops' results are used
  (void)keep;
  std::nth_element(rates.begin(), rates.begin() + calls / 2, rates.end());
  return rates[static_cast<std::size_t>(calls / 2)];
}

}  // namespace diffprobe::bench
