#include "cpu/quantize.hpp"

#include <algorithm>
#include <cmath>

#include "cpu/bf16.hpp"
#include "cpu/simd.hpp"

namespace diffprobe::cpu {
namespace {

using i64 = std::int64_t;

constexpr i64 kChunk = 16384;  // values per parallel work item

template <class T> float max_abs_generic(const T* x, i64 n) {
  float m = 0.0f;
  for (i64 i = 0; i < n; ++i) {
    const float v = std::fabs(to_f32(x[i]));
    if (std::isnan(v)) return v;
    m = std::max(m, v);
  }
  return m;
}

template <class T> void quantize_generic(const T* x, std::int8_t* q, i64 n, float inv) {
  for (i64 i = 0; i < n; ++i) {
    const float r = std::nearbyint(to_f32(x[i]) * inv);  // round half to even (default mode)
    q[i] = static_cast<std::int8_t>(std::clamp(r, -kInt8Max, kInt8Max));
  }
}

#if DIFFPROBE_HAVE_AVX512
template <class T> DIFFPROBE_AVX512 float max_abs_avx512(const T* x, i64 n) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 nan = 0;
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_abs_ps(simd::load(x + i));
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, v);
  }
  if (i < n) {
    const __m512 v = _mm512_abs_ps(simd::load(x + i, simd::tail_mask(n - i)));
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, v);
  }
  return nan ? std::nanf("") : _mm512_reduce_max_ps(m);
}

template <class T> DIFFPROBE_AVX512 void quantize_avx512(const T* x, std::int8_t* q, i64 n, float inv) {
  const __m512 s = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    // cvtps rounds half to even (MXCSR default); NaN becomes INT_MIN, clamped to -127.
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(simd::load(x + i), s));
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(v));
  }
  if (i < n) {
    const __mmask16 k = simd::tail_mask(n - i);
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(simd::load(x + i, k), s));
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    _mm_mask_storeu_epi8(q + i, k, _mm512_cvtepi32_epi8(v));
  }
}

// y[0, n) = acc * s + b[c] (+ r) for one NHWC row of n channels.
template <class Out, class Res> DIFFPROBE_AVX512 void dequantize_row_avx512(const float* acc, Out* y,
                                                                            const float* bias, const Res* res,
                                                                            i64 n, float s) {
  const __m512 vs = _mm512_set1_ps(s);
  i64 c = 0;
  for (; c < n; c += 16) {
    const __mmask16 k = simd::tail_mask(n - c);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, acc + c), vs);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + c));
    if (res) v = _mm512_add_ps(v, simd::load(res + c, k));
    simd::store(y + c, v, k);
  }
}
#endif

}  // namespace

namespace {

// body(values, item, n, offset, len) for every chunk of every image of x (values: x's elements from
// `offset`, float or Bf16), in parallel over fixed chunks (the results do not depend on threads).
template <class Body> void for_each_image_chunk(const Tensor& x, int threads, Body&& body) {
  const i64 N = x.dim(0), per = N ? x.numel() / N : 0, chunks = (per + kChunk - 1) / kChunk;
  dispatch_activation(x.dtype(), "int8 quantisation", [&](auto t) {
    using T = decltype(t);
    const T* p = elems<const T>(x);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 item = 0; item < N * chunks; ++item) {
      const i64 n = item / chunks, i0 = (item % chunks) * kChunk, at = n * per + i0;
      body(p + at, item, n, at, std::min(kChunk, per - i0));
    }
  });
}

}  // namespace

std::vector<float> image_max_abs(const Tensor& x, int threads) {
  const i64 N = x.dim(0), per = N ? x.numel() / N : 0, chunks = (per + kChunk - 1) / kChunk;
  std::vector<float> part(static_cast<std::size_t>(N * chunks), 0.0f), out(static_cast<std::size_t>(N), 0.0f);
  const bool avx = simd::use_avx512();
  (void)avx;
  for_each_image_chunk(x, threads, [&](const auto* v, i64 item, i64, i64, i64 len) {
#if DIFFPROBE_HAVE_AVX512
    if (avx) {
      part[static_cast<std::size_t>(item)] = max_abs_avx512(v, len);
      return;
    }
#endif
    part[static_cast<std::size_t>(item)] = max_abs_generic(v, len);
  });
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < chunks; ++c) {
      const float v = part[static_cast<std::size_t>(n * chunks + c)];
      float& m = out[static_cast<std::size_t>(n)];
      m = std::isnan(v) || std::isnan(m) ? std::nanf("") : std::max(m, v);
    }
  return out;
}

void quantize_s8(const Tensor& x, std::int8_t* q, const std::vector<float>& scales, int threads) {
  const bool avx = simd::use_avx512();
  (void)avx;
  for_each_image_chunk(x, threads, [&](const auto* v, i64, i64 n, i64 at, i64 len) {
    const float inv = 1.0f / scales[scales.size() == 1 ? 0 : static_cast<std::size_t>(n)];
#if DIFFPROBE_HAVE_AVX512
    if (avx) {
      quantize_avx512(v, q + at, len, inv);
      return;
    }
#endif
    quantize_generic(v, q + at, len, inv);
  });
}

void dequantize(const float* acc, const Tensor& y, const float* bias, const Tensor& residual,
                const std::vector<float>& scales, int threads) {
  const Shape& s = y.shape();
  const i64 N = s[0], O = s[1], HW = s[2] * s[3];
  const bool nhwc = y.layout() == Layout::NHWC;
  dispatch_activation(y.dtype(), "int8 dequantisation", [&](auto out_t) {
    dispatch_activation(
        residual.defined() ? residual.dtype() : y.dtype(), "int8 dequantisation", [&](auto res_t) {
          using Out = decltype(out_t);
          using Res = decltype(res_t);
          Out* yp = elems<Out>(y);
          const Res* rp = residual.defined() ? elems<const Res>(residual) : nullptr;
          const bool avx = simd::use_avx512();
          (void)avx;
          // NHWC: one item per pixel row of O channels; NCHW: one per channel plane.
          const i64 items = nhwc ? N * HW : N * O, len = nhwc ? O : HW;
#pragma omp parallel for num_threads(threads) schedule(static)
          for (i64 item = 0; item < items; ++item) {
            const i64 n = nhwc ? item / HW : item / O;
            const float sc = scales[static_cast<std::size_t>(n)];
            const i64 at = item * len;
            const Res* r = rp ? rp + at : nullptr;
            if (nhwc) {
#if DIFFPROBE_HAVE_AVX512
              if (avx) {
                dequantize_row_avx512(acc + at, yp + at, bias, r, len, sc);
                continue;
              }
#endif
              for (i64 c = 0; c < len; ++c)
                yp[at + c] =
                    from_f32<Out>(acc[at + c] * sc + (bias ? bias[c] : 0.0f) + (r ? to_f32(r[c]) : 0.0f));
            } else {
              const float b = bias ? bias[item % O] : 0.0f;
              for (i64 i = 0; i < len; ++i)
                yp[at + i] = from_f32<Out>(acc[at + i] * sc + b + (r ? to_f32(r[i]) : 0.0f));
            }
          }
        });
  });
}

}  // namespace diffprobe::cpu
