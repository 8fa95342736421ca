#pragma once
// SIMD helpers for the hand-written CPU kernels. The library is built for the baseline x86-64 ISA,
// so AVX-512 code lives in functions marked DIFFPROBE_AVX512 and is chosen at run time with
// simd::use_avx512(). Plain loops shared by both variants go in DIFFPROBE_INLINE bodies: inlined
// into an AVX-512 caller they are auto-vectorised with 512-bit registers.
#include <atomic>
#include <cmath>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define DIFFPROBE_HAVE_AVX512 1
// GCC 12's AVX-512 headers pass _mm512_undefined_ps() as the unused merge source, which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593); the value is never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
// AVX512_BF16 is allowed too, for its instructions behind run-time checks (use_avx512_bf16(),
// native_bf16_convert()): compilers only emit them for their intrinsics.
#define DIFFPROBE_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,avx512bf16")))
#else
#define DIFFPROBE_HAVE_AVX512 0
#define DIFFPROBE_AVX512
#endif

#define DIFFPROBE_INLINE inline __attribute__((always_inline))

namespace diffprobe::cpu::simd {

namespace detail {
inline std::atomic<bool>& avx512_allowed() {
  static std::atomic<bool> allowed{true};
  return allowed;
}
}  // namespace detail

/// True when the AVX-512 kernels may run: the CPU has them and tests have not switched them off.
inline bool use_avx512() noexcept {
#if DIFFPROBE_HAVE_AVX512
  static const bool cpu_has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                              __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return cpu_has && detail::avx512_allowed().load(std::memory_order_relaxed);
#else
  return false;
#endif
}

namespace detail {
inline bool cpu_has_avx512_bf16() noexcept {
#if DIFFPROBE_HAVE_AVX512
  __builtin_cpu_init();  // (may run during static initialisation)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}
// Read in inner loops: a plain global, set once.
inline const bool kCpuHasAvx512Bf16 = cpu_has_avx512_bf16();
}  // namespace detail

/// True when the bf16 dot-product kernels may run: use_avx512() and the CPU has AVX512_BF16.
inline bool use_avx512_bf16() noexcept { return detail::kCpuHasAvx512Bf16 && use_avx512(); }

/// Lets tests run the portable kernels on an AVX-512 machine. Returns the previous setting.
inline bool set_avx512_allowed(bool allowed) noexcept { return detail::avx512_allowed().exchange(allowed); }

// SiLU as x * sigmoid(x) with sigmoid from e = exp(-|x|), which never overflows: x / (1 + exp(-x))
// loses all relative accuracy below x = -88 and gives NaN at -inf. Below -104 the result is 0.

/// Scalar SiLU for the portable paths.
inline float silu(float x) noexcept {
  if (x < -104.0f) return 0.0f;
  const float e = std::exp(-std::fabs(x));
  const float r = 1.0f / (1.0f + e);
  return x * (x < 0.0f ? e * r : r);
}

#if DIFFPROBE_HAVE_AVX512
/// exp(x) for 16 floats, about 1 ulp (Cephes' polynomial on [-ln2/2, ln2/2], scaled with scalef so
/// overflow gives inf and underflow gives 0). NaN propagates.
DIFFPROBE_AVX512 inline __m512 exp512(__m512 x) {
  // max/min return their second operand on NaN: keep x second so NaN survives the clamp.
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

/// exp(x) for 16 floats to about 5e-5 relative (a degree-4 polynomial): for values that are
/// rounded to bf16 next (relative step 2^-8), where exp512's 1 ulp would be wasted work.
DIFFPROBE_AVX512 inline __m512 exp512_for_bf16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.69314718056f), x);
  __m512 p = _mm512_set1_ps(1.0f / 24.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

/// x * sigmoid(x) for 16 floats (see silu above).
DIFFPROBE_AVX512 inline __m512 silu512(__m512 x) {
  const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 sig = _mm512_mask_mul_ps(r, neg, e, r);
  // Unordered compare keeps NaN lanes (NaN * sig stays NaN); lanes below -104 become 0.
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_NLT_UQ);
  return _mm512_maskz_mul_ps(keep, x, sig);
}

/// Mask selecting the first `n` (0..16) lanes.
DIFFPROBE_AVX512 inline __mmask16 tail_mask(long n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffffu : ((1u << n) - 1u));
}
#endif

}  // namespace diffprobe::cpu::simd
