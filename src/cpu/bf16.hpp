#pragma once
// bf16 activations in the hand-written CPU kernels: loads widen bf16 to fp32 (exact), stores
// round fp32 to bf16 to nearest even, NaN kept quiet, as float_to_bf16 (dtype.hpp) does (the
// AVX-512 stores also flush denormal results to zero where the CPU converts natively). Kernels are templates
// over the element type they read and write: float (f32) or Bf16 (the raw 16 bits of a bf16 value).
#include <cstdint>
#include <type_traits>

#include "cpu/simd.hpp"
#include "diffprobe/core/dtype.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::cpu {

using Bf16 = std::uint16_t;

template <class T> constexpr bool kIsBf16 = std::is_same_v<std::remove_const_t<T>, Bf16>;

DIFFPROBE_INLINE float to_f32(float v) { return v; }
DIFFPROBE_INLINE float to_f32(Bf16 v) { return bf16_to_float(v); }

template <class T> DIFFPROBE_INLINE T from_f32(float v) {
  if constexpr (kIsBf16<T>)
    return float_to_bf16(v);
  else
    return v;
}

/// The element pointer of an activation tensor of dtype F32 (T = float) or BF16 (T = Bf16).
template <class T> T* elems(const Tensor& t) {
  if constexpr (kIsBf16<T>)
    return reinterpret_cast<T*>(
        t.data<std::conditional_t<std::is_const_v<T>, const std::uint16_t, std::uint16_t>>());
  else
    return t.data<T>();
}

/// Calls f(float{}) or f(Bf16{}) for an activation dtype (F32 / BF16); DTypeError otherwise.
template <class F> decltype(auto) dispatch_activation(DType d, const char* where, F&& f) {
  if (d == DType::F32) return f(float{});
  if (d == DType::BF16) return f(Bf16{});
  throw DTypeError(where, std::string("activations must be f32 or bf16, got ") + std::string(dtype_name(d)));
}

#if DIFFPROBE_HAVE_AVX512
namespace simd {

DIFFPROBE_AVX512 inline __m512 load(const float* p) { return _mm512_loadu_ps(p); }
DIFFPROBE_AVX512 inline __m512 load(const Bf16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
DIFFPROBE_AVX512 inline __m512 load(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
DIFFPROBE_AVX512 inline __m512 load(const Bf16* p, __mmask16 k) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

/// fp32 -> 16 bf16: round to nearest even, NaN -> quiet. With AVX512_BF16 one vcvtneps2bf16,
/// which also flushes denormal results (|x| < 1.2e-38) to zero; otherwise float_to_bf16's integer
/// steps (denormals kept).
DIFFPROBE_AVX512 inline __m256i round_to_bf16(__m512 v) {
  if (detail::kCpuHasAvx512Bf16) return (__m256i)_mm512_cvtneps_pbh(v);
  const __m512i u = _mm512_castps_si512(v);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

DIFFPROBE_AVX512 inline void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
DIFFPROBE_AVX512 inline void store(Bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), round_to_bf16(v));
}
DIFFPROBE_AVX512 inline void store(float* p, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(p, k, v); }
DIFFPROBE_AVX512 inline void store(Bf16* p, __m512 v, __mmask16 k) {
  _mm256_mask_storeu_epi16(p, k, round_to_bf16(v));
}

}  // namespace simd
#endif

}  // namespace diffprobe::cpu
