#pragma once
// The machine's compute limits (BENCHMARK.md): register-only loops of 12 independent accumulators
// (enough to hide the latency on two pipes) on every thread.
//   fp32: FMA, 2 FLOP per lane per instruction; AVX-512 where the CPU has it, else AVX2+FMA, else
//         scalar. The limit every fp32 "fraction of peak" is taken against.
//   bf16: AVX512_BF16 vdpbf16ps, 2 bf16 products summed into each fp32 lane: 4 FLOP per lane per
//         instruction. What oneDNN's bf16 convolutions and matmuls run on (Zen 4, Zen 5, Cooper
//         Lake and later Xeons); the limit of the bf16 precision.
//   int8: AVX512_VNNI vpdpbusd, 4 u8 x s8 products summed into each int32 lane: 8 OP per lane per
//         instruction (multiplies and adds counted as FLOP are, for the fp32 loop).
// Shared by bench_peak (the numbers on their own) and bench_unet (the limit of its precision
// measured next to each timed pass, see there).
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

// The bf16 dot-product loop: acc += a . b over pairs of bf16 (vdpbf16ps).
__attribute__((target("avx512f,avx512bf16"))) inline float bf16_dot_loop_avx512(float seed) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed + static_cast<float>(i));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(1e-4f));
  for (long it = 0; it < kIters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  float r = 0;
  for (float v : out) r += v;
  return r;
}

// The int8 dot-product loop: acc += a . b over groups of four u8 x s8 (vpdpbusd).
__attribute__((target("avx512f,avx512vnni"))) inline float int8_dot_loop_avx512(float seed) {
  __m512i acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(static_cast<int>(seed) + i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-1);
  for (long it = 0; it < kIters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  __m512i s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, acc[i]);
  alignas(64) int out[16];
  _mm512_store_si512(out, s);
  float r = 0;
  for (int v : out) r += static_cast<float>(v);
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

/// Which limit: the fp32 FMA loop, the bf16 or the int8 dot-product loop.
enum class PeakKind { FP32, BF16, INT8 };

inline const char* peak_kind_name(PeakKind k) {
  return k == PeakKind::FP32 ? "fp32" : k == PeakKind::BF16 ? "bf16" : "int8";
}

/// Whether this CPU has the instructions of `kind`'s loop (fp32 always: it falls back to AVX2 or
/// scalar).
inline bool peak_supported(PeakKind kind) {
#if defined(__x86_64__)
  if (kind == PeakKind::BF16) return __builtin_cpu_supports("avx512bf16");
  if (kind == PeakKind::INT8) return __builtin_cpu_supports("avx512vnni");
  return true;
#else
  return kind == PeakKind::FP32;
#endif
}

/// One call of `kind`'s loop on this thread (peak_supported(kind) must hold).
inline float peak_loop(PeakKind kind, float seed) {
#if defined(__x86_64__)
  if (kind == PeakKind::BF16) return bf16_dot_loop_avx512(seed);
  if (kind == PeakKind::INT8) return int8_dot_loop_avx512(seed);
#endif
  return fma_loop(seed);
}

/// Operations (FLOP, or int8 OP) of one peak_loop call on one thread.
inline double peak_loop_flop(PeakKind kind) {
  if (kind == PeakKind::BF16) return 4.0 * 12 * 16 * static_cast<double>(kIters);
  if (kind == PeakKind::INT8) return 8.0 * 12 * 16 * static_cast<double>(kIters);
  return fma_loop_flop();
}

/// The limit on `threads` threads right now, G(FL)OP/s: the median of `calls` timed runs of
/// `kind`'s loop on every thread (~7 ms each at 3.4 GHz).
inline double peak_gflops(PeakKind kind, int threads, int calls) {
  std::vector<double> rates;
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (int c = 0; c < calls; ++c) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    sink[static_cast<std::size_t>(omp_get_thread_num())] =
        peak_loop(kind, static_cast<float>(omp_get_thread_num()));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(peak_loop_flop(kind) * threads / s / 1e9);
  }
  volatile float keep = sink[0];  // the loops' results are used
  (void)keep;
  std::nth_element(rates.begin(), rates.begin() + calls / 2, rates.end());
  return rates[static_cast<std::size_t>(calls / 2)];
}

/// The fp32 FMA limit (peak_gflops(PeakKind::FP32, ...)).
inline double fma_peak_gflops(int threads, int calls) { return peak_gflops(PeakKind::FP32, threads, calls); }

}  // namespace diffprobe::bench
