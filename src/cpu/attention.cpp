// Multi-head self-attention over image tokens, straight from the qkv projection's output.
//
// Per (sample, head), K is packed once as K^T [d, Tp] and V as [T, dp] (Tp, dp: T and d rounded
// up to 16, zero padded), so the matmul kernels only ever see contiguous, vector-aligned rows
// whatever the layout (NHWC / NCHW) and channel order (legacy / split). Then each thread takes a
// tile of queries: S = Q K^T for the tile against all keys, a stable softmax of each row in
// place (exp((s - max) / sqrt(d))), O = P V, and O / rowsum written to the output. Only one tile
// of scores per thread is ever alive.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu_ops.hpp"
#include "cpu/onednn_common.hpp"
#include "cpu/simd.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu {
namespace {

using i64 = std::int64_t;

constexpr i64 kQueryTile = 64;

i64 round16(i64 v) { return (v + 15) / 16 * 16; }

// Row stride for a [rows, n] buffer that the matmul walks down a column of: a multiple of
// 1 KiB (256 floats) would put every row of a K^T panel in the same few L1 sets (64 rows of a
// 4 KiB stride thrash a 12-way cache), so such strides get one more 64-byte line.
// Measured on one Zen 5 core, S = Q K^T for a 64-query tile against 1,024 keys (d = 64):
// 114-182 GFLOP/s with a 1,024-float stride, 200-205 with 1,040.
i64 row_stride(i64 n) {
  const i64 r = round16(n);
  return r % 256 == 0 ? r + 16 : r;
}

// ---- matmul C[M, N] = A[M, K] * B[K, N], row-major, N a multiple of 16 ---------------------------

void gemm_generic(i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb, float* C, i64 ldc) {
  for (i64 i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    std::fill(c, c + N, 0.0f);
    for (i64 k = 0; k < K; ++k) {
      const float a = A[i * lda + k];
      const float* b = B + k * ldb;
#pragma omp simd
      for (i64 j = 0; j < N; ++j) c[j] += a * b[j];
    }
  }
}

#if DIFFPROBE_HAVE_AVX512
// MR rows x NV*16 columns of C held in registers across the whole K loop.
template <int MR, int NV>
DIFFPROBE_AVX512 void gemm_micro(i64 K, const float* A, i64 lda, const float* B, i64 ldb, float* C, i64 ldc) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (i64 k = 0; k < K; ++k) {
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(B + k * ldb + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + 16 * v, acc[r][v]);
}

// The fp32 micro-kernel as one of the two that gemm_panels runs (the bf16 one is below).
struct Fp32Kernel {
  using T = float;
  using Fn = void (*)(i64, const float*, i64, const float*, i64, float*, i64);
  static constexpr i64 kPerColumn = 1;  // elements of B per column of a row
  template <int MR, int NV> static constexpr Fn micro() { return gemm_micro<MR, NV>; }
};

constexpr int kMR = 6, kNV = 4;

template <class Kernel, int MR> constexpr typename Kernel::Fn micro_for(int nv) {
  return nv == 1   ? Kernel::template micro<MR, 1>()
         : nv == 2 ? Kernel::template micro<MR, 2>()
         : nv == 3 ? Kernel::template micro<MR, 3>()
                   : Kernel::template micro<MR, 4>();
}

template <class Kernel> typename Kernel::Fn micro_table(int mr, int nv) {
  switch (mr) {
    case 1: return micro_for<Kernel, 1>(nv);
    case 2: return micro_for<Kernel, 2>(nv);
    case 3: return micro_for<Kernel, 3>(nv);
    case 4: return micro_for<Kernel, 4>(nv);
    case 5: return micro_for<Kernel, 5>(nv);
    default: return micro_for<Kernel, 6>(nv);
  }
}

// C[M, N] = A * B with Kernel's micro-kernels, N a multiple of 16. Column panels outermost: a
// K x 64 panel of B stays in L1 while the rows of A stream past.
template <class Kernel> void gemm_panels(i64 M, i64 N, i64 K, const typename Kernel::T* A, i64 lda,
                                         const typename Kernel::T* B, i64 ldb, float* C, i64 ldc) {
  for (i64 j = 0; j < N; j += 16 * kNV) {
    const int nv = static_cast<int>(std::min<i64>(kNV, (N - j) / 16));
    for (i64 i = 0; i < M; i += kMR) {
      const int mr = static_cast<int>(std::min<i64>(kMR, M - i));
      micro_table<Kernel>(mr, nv)(K, A + i * lda, lda, B + Kernel::kPerColumn * j, ldb, C + i * ldc + j, ldc);
    }
  }
}

void gemm_avx512(i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb, float* C, i64 ldc) {
  gemm_panels<Fp32Kernel>(M, N, K, A, lda, B, ldb, C, ldc);
}

// In-place p = exp((s - max) * scale) over s[0, n); returns the sum of p.
DIFFPROBE_AVX512 float softmax_row_avx512(float* s, i64 n, float scale) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  i64 j = 0;
  for (; j + 16 <= n; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
  if (j < n)
    mx = _mm512_mask_max_ps(mx, simd::tail_mask(n - j), mx,
                            _mm512_maskz_loadu_ps(simd::tail_mask(n - j), s + j));
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), vs = _mm512_set1_ps(scale);
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 p = simd::exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmax), vs));
    sum = _mm512_add_ps(sum, p);
    _mm512_storeu_ps(s + j, p);
  }
  if (j < n) {
    const __mmask16 k = simd::tail_mask(n - j);
    const __m512 p = simd::exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vmax), vs));
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, p));
    _mm512_mask_storeu_ps(s + j, k, p);
  }
  return _mm512_reduce_add_ps(sum);
}

// p[0, n) = bf16(exp((s - max) * scale)), p[n] = 0 when `pad`; returns the sum of the rounded p
// (so that dividing by it makes each output a weighted mean of the v it multiplies).
DIFFPROBE_AVX512 float softmax_row_bf16_avx512(const float* s, Bf16* p, i64 n, float scale, bool pad) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  i64 j = 0;
  for (; j + 16 <= n; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
  if (j < n)
    mx = _mm512_mask_max_ps(mx, simd::tail_mask(n - j), mx,
                            _mm512_maskz_loadu_ps(simd::tail_mask(n - j), s + j));
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), vs = _mm512_set1_ps(scale);
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 e = simd::exp512_for_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmax), vs));
    const __m256i b = simd::round_to_bf16(e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), b);
    sum = _mm512_add_ps(sum, simd::load(p + j));
  }
  if (j < n) {
    const __mmask16 k = simd::tail_mask(n - j);
    const __m512 e =
        simd::exp512_for_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vmax), vs));
    simd::store(p + j, e, k);
    sum = _mm512_add_ps(sum, simd::load(p + j, k));
  }
  if (pad) p[n] = 0;
  return _mm512_reduce_add_ps(sum);
}

// dst[k2 * ldd + i] = the pair (row a [i], row b [i]) for i < n: two token rows of V interleaved
// (b null: the zero row past an odd token count).
DIFFPROBE_AVX512 void interleave_rows(const Bf16* a, const Bf16* b, Bf16* dst, i64 n) {
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
    const __m512i hi = b ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)))
                         : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + 2 * i, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
  for (; i < n; ++i) {
    dst[2 * i] = a[i];
    dst[2 * i + 1] = b ? b[i] : Bf16{0};
  }
}

// ---- bf16 operands, fp32 accumulation: C[M, N] = A[M, 2*K2] * B[2*K2, N] ----------------------------
// vdpbf16ps adds the products of a pair of bf16 values to each fp32 lane, so B is stored as K2
// rows of N pairs (element (k, j) at B[(k / 2 * ldb + j) * 2 + k % 2]) and A row-major with an
// even row length: a row's pair k is one 32-bit broadcast.
template <int MR, int NV> DIFFPROBE_AVX512 void gemm_bf16_micro(i64 K2, const Bf16* A, i64 lda, const Bf16* B,
                                                                i64 ldb, float* C, i64 ldc) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (i64 k = 0; k < K2; ++k) {
    __m512i b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(B + (k * ldb + 16 * v) * 2);
    for (int r = 0; r < MR; ++r) {
      std::int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * k, sizeof pair);
      const __m512i a = _mm512_set1_epi32(pair);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)a, (__m512bh)b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + 16 * v, acc[r][v]);
}

struct Bf16Kernel {
  using T = Bf16;
  using Fn = void (*)(i64, const Bf16*, i64, const Bf16*, i64, float*, i64);
  static constexpr i64 kPerColumn = 2;  // a column of B is a pair of rows
  template <int MR, int NV> static constexpr Fn micro() { return gemm_bf16_micro<MR, NV>; }
};

// K2 = the number of pairs of A's columns (B's rows of pairs).
void gemm_bf16(i64 M, i64 N, i64 K2, const Bf16* A, i64 lda, const Bf16* B, i64 ldb, float* C, i64 ldc) {
  gemm_panels<Bf16Kernel>(M, N, K2, A, lda, B, ldb, C, ldc);
}
#endif

float softmax_row_generic(float* s, i64 n, float scale) {
  float mx = -std::numeric_limits<float>::infinity();
  for (i64 j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (i64 j = 0; j < n; ++j) {
    s[j] = std::exp((s[j] - mx) * scale);
    sum += s[j];
  }
  return sum;
}

// ---- operand access ------------------------------------------------------------------------------

// Where channel `c` of role r (0 q, 1 k, 2 v) of head h sits in the qkv tensor, and the strides of
// its [token, channel] view.
template <class In> struct QkvView {
  const In* base;  // sample n
  i64 C, d, T;
  bool nhwc, legacy;

  const In* at(i64 h, int role) const {
    const i64 o = legacy ? h * 3 * d + role * d : role * C + h * d;
    return base + (nhwc ? o : o * T);
  }
  i64 token_stride() const { return nhwc ? 3 * C : 1; }
  i64 channel_stride() const { return nhwc ? 1 : T; }
};

// dst[t, i] = src(token t0 + t, channel i) for t < m, i < d; dst row stride ldd.
template <class In>
void gather_rows(const QkvView<In>& v, const In* src, i64 t0, i64 m, float* dst, i64 ldd) {
  const i64 ts = v.token_stride(), cs = v.channel_stride();
  if (cs == 1) {
    for (i64 t = 0; t < m; ++t) {
      const In* r = src + (t0 + t) * ts;
#pragma omp simd
      for (i64 i = 0; i < v.d; ++i) dst[t * ldd + i] = to_f32(r[i]);
    }
  } else {
    for (i64 i = 0; i < v.d; ++i)
      for (i64 t = 0; t < m; ++t) dst[t * ldd + i] = to_f32(src[i * cs + (t0 + t) * ts]);
  }
}

// dst[i, t] = src(token t, channel i): the transposed view, row stride ldd.
template <class In> void gather_cols(const QkvView<In>& v, const In* src, float* dst, i64 ldd) {
  const i64 ts = v.token_stride(), cs = v.channel_stride();
  if (ts == 1) {
    for (i64 i = 0; i < v.d; ++i) {
      const In* r = src + i * cs;
#pragma omp simd
      for (i64 t = 0; t < v.T; ++t) dst[i * ldd + t] = to_f32(r[t]);
    }
  } else {
    for (i64 t = 0; t < v.T; ++t)
      for (i64 i = 0; i < v.d; ++i) dst[i * ldd + t] = to_f32(src[t * ts + i * cs]);
  }
}

// Rounds v[0, n) to bf16 precision in place (the portable path's model of bf16 operands).
void round_to_bf16(float* v, i64 n) {
  for (i64 i = 0; i < n; ++i) v[i] = bf16_to_float(float_to_bf16(v[i]));
}

// fp32 operands, or (round_bf16) the values the bf16 kernel multiplies: q, k, v and the
// probabilities rounded to bf16, products summed in fp32, the row sum that of the rounded
// probabilities.
template <class In, class Out> void attention_impl(const Tensor& qkv, Tensor& out, int heads,
                                                   ops::QkvOrder order, int threads, Allocator* alloc,
                                                   bool round_bf16) {
  const Shape& s = qkv.shape();
  const i64 N = s[0], C = s[1] / 3, T = s[2] * s[3], nh = heads, d = C / nh;
  const bool nhwc = qkv.layout() == Layout::NHWC;
  const In* src = elems<const In>(qkv);
  Out* dst = elems<Out>(out);
  const i64 Tp = round16(T), Tl = row_stride(T), dp = round16(d);
  const i64 pack_size = d * Tl + T * dp;
  const bool avx = simd::use_avx512();
  (void)avx;  // unused where the AVX-512 kernels are not compiled
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  auto view_of = [&](i64 n) {
    return QkvView<In>{src + n * 3 * C * T, C, d, T, nhwc, order == ops::QkvOrder::Legacy};
  };

  // K^T [d, Tp] (row stride Tl) and V [T, dp] of every (sample, head), zero padded.
  Tensor packs =
      Tensor::empty(Shape{N * nh, pack_size}, DType::F32, Layout::Contiguous, Device::cpu(), alloc);
  float* pk = packs.data<float>();
  const i64 tq = std::min(kQueryTile, T), ntiles = (T + tq - 1) / tq;
  // Each thread's tiles (queries, scores, outputs, row sums) come from the context's allocator
  // too: at 1,024 tokens the score tile alone is 256 KB, which malloc maps afresh (and the
  // kernel zero-fills page by page) on every call.
  const i64 q_size = round16(tq * d), sc_size = round16(tq * Tl), o_size = round16(tq * dp);
  const i64 per_thread = q_size + sc_size + o_size + round16(tq);
  Tensor tiles =
      Tensor::empty(Shape{threads, per_thread}, DType::F32, Layout::Contiguous, Device::cpu(), alloc);
  // One parallel region for both phases: a fork/join costs more than the packing of a small image.
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (i64 item = 0; item < N * nh; ++item) {
      const QkvView v = view_of(item / nh);
      const i64 h = item % nh;
      float* kt = pk + item * pack_size;
      float* vv = kt + d * Tl;
      gather_cols(v, v.at(h, 1), kt, Tl);
      gather_rows(v, v.at(h, 2), 0, T, vv, dp);
      for (i64 i = 0; i < d; ++i) std::fill(kt + i * Tl + T, kt + (i + 1) * Tl, 0.0f);
      if (dp > d)
        for (i64 t = 0; t < T; ++t) std::fill(vv + t * dp + d, vv + (t + 1) * dp, 0.0f);
      if (round_bf16) round_to_bf16(kt, pack_size);
    }  // implicit barrier: every pack is complete before any tile reads it

    float* const q = tiles.data<float>() + omp_get_thread_num() * per_thread;  // (1 thread if nested)
    float* const sc = q + q_size;
    float* const o = sc + sc_size;
    float* const rsum = o + o_size;
#pragma omp for schedule(static)
    for (i64 item = 0; item < N * nh * ntiles; ++item) {
      const i64 n = item / (nh * ntiles), h = (item / ntiles) % nh, t0 = (item % ntiles) * tq;
      const i64 m = std::min(tq, T - t0);
      const QkvView v = view_of(n);
      const float* kt = pk + (n * nh + h) * pack_size;
      const float* vv = kt + d * Tl;
      gather_rows(v, v.at(h, 0), t0, m, q, d);
      if (round_bf16) {  // the portable kernels only (the bf16 kernel is attention_bf16_impl)
        round_to_bf16(q, m * d);
        gemm_generic(m, Tp, d, q, d, kt, Tl, sc, Tl);
        for (i64 i = 0; i < m; ++i) {
          float* row = sc + i * Tl;
          (void)softmax_row_generic(row, T, scale);
          round_to_bf16(row, T);
          float sum = 0.0f;
          for (i64 j = 0; j < T; ++j) sum += row[j];
          rsum[i] = sum;
        }
        gemm_generic(m, dp, T, sc, Tl, vv, dp, o, dp);
      } else
#if DIFFPROBE_HAVE_AVX512
          if (avx) {
        gemm_avx512(m, Tp, d, q, d, kt, Tl, sc, Tl);
        for (i64 i = 0; i < m; ++i) rsum[i] = softmax_row_avx512(sc + i * Tl, T, scale);
        gemm_avx512(m, dp, T, sc, Tl, vv, dp, o, dp);
      } else
#endif
      {
        gemm_generic(m, Tp, d, q, d, kt, Tl, sc, Tl);
        for (i64 i = 0; i < m; ++i) rsum[i] = softmax_row_generic(sc + i * Tl, T, scale);
        gemm_generic(m, dp, T, sc, Tl, vv, dp, o, dp);
      }
      // Output channel h*d + i of token t0 + t.
      for (i64 t = 0; t < m; ++t) rsum[t] = 1.0f / rsum[t];
      if (nhwc) {
        for (i64 t = 0; t < m; ++t) {
          Out* y = dst + (n * T + t0 + t) * C + h * d;
          for (i64 i = 0; i < d; ++i) y[i] = from_f32<Out>(o[t * dp + i] * rsum[t]);
        }
      } else {
        for (i64 i = 0; i < d; ++i) {
          Out* y = dst + (n * C + h * d + i) * T + t0;
          for (i64 t = 0; t < m; ++t) y[t] = from_f32<Out>(o[t * dp + i] * rsum[t]);
        }
      }
    }
  }
}

#if DIFFPROBE_HAVE_AVX512
// bf16 operands with fp32 accumulation (AVX512_BF16), in gemm_bf16's pair layout: per (sample,
// head) K^T as ceil(d/2) rows of Tl tokens, each a pair of channels (element (i, t) at
// [(i / 2 * Tl + t) * 2 + i % 2]), and V as ceil(T/2) rows of dp channels, each a pair of tokens;
// per thread the query tile in bf16, S = Q K^T in fp32, the softmax in fp32, P rounded to bf16
// for P V (the row sum is that of the rounded P, so each output is a weighted mean).
template <class In, class Out> void attention_bf16_impl(const Tensor& qkv, Tensor& out, int heads,
                                                        ops::QkvOrder order, Allocator* alloc, int threads) {
  const Shape& s = qkv.shape();
  const i64 N = s[0], C = s[1] / 3, T = s[2] * s[3], nh = heads, d = C / nh;
  const bool nhwc = qkv.layout() == Layout::NHWC;
  const In* src = elems<const In>(qkv);
  Out* dst = elems<Out>(out);
  const i64 Tp = round16(T), Tl = row_stride(T), dp = round16(d);
  const i64 d2 = (d + 1) / 2, T2 = (T + 1) / 2;
  const i64 kt_size = d2 * Tl * 2, v_size = T2 * dp * 2, pack_size = kt_size + v_size;  // bf16 elements
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  auto view_of = [&](i64 n) {
    return QkvView<In>{src + n * 3 * C * T, C, d, T, nhwc, order == ops::QkvOrder::Legacy};
  };
  const auto b16 = [](In v) { return float_to_bf16(to_f32(v)); };

  Tensor packs =
      Tensor::empty(Shape{N * nh, pack_size}, DType::BF16, Layout::Contiguous, Device::cpu(), alloc);
  Bf16* pk = elems<Bf16>(packs);
  const i64 tq = std::min(kQueryTile, T), ntiles = (T + tq - 1) / tq;
  const i64 ldq = 2 * d2, ldp = 2 * T2;
  // Per thread (in bytes, 64-byte aligned pieces): the bf16 query tile, the fp32 scores, the bf16
  // probabilities, the fp32 output and row sums.
  const auto align = [](i64 bytes) { return (bytes + 63) / 64 * 64; };
  const i64 q_bytes = align(tq * ldq * 2), sc_bytes = align(tq * Tl * 4), p_bytes = align(tq * ldp * 2),
            o_bytes = align(tq * dp * 4), r_bytes = align(tq * 4);
  const i64 per_thread = q_bytes + sc_bytes + p_bytes + o_bytes + r_bytes;
  const Tensor tile_store =
      Tensor::empty(Shape{threads * per_thread / 4}, DType::F32, Layout::Contiguous, Device::cpu(), alloc);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (i64 item = 0; item < N * nh; ++item) {
      const QkvView v = view_of(item / nh);
      const i64 h = item % nh;
      Bf16* kt = pk + item * pack_size;
      Bf16* vv = kt + kt_size;
      const i64 ts = v.token_stride(), cs = v.channel_stride();
      const In* ks = v.at(h, 1);
      const In* vs = v.at(h, 2);
      if constexpr (kIsBf16<In>) {
        if (nhwc && d % 2 == 0) {  // the U-Net's case: pairs of channels are 32-bit words already
          std::uint32_t* kw = reinterpret_cast<std::uint32_t*>(kt);
          for (i64 k2 = 0; k2 < d2; ++k2) std::fill(kw + k2 * Tl + T, kw + (k2 + 1) * Tl, 0u);
          for (i64 t = 0; t < T; ++t) {
            const In* row = ks + t * ts;
            for (i64 k2 = 0; k2 < d2; ++k2) std::memcpy(kw + k2 * Tl + t, row + 2 * k2, 4);
          }
          for (i64 k2 = 0; k2 < T2; ++k2) {
            Bf16* out_row = vv + k2 * dp * 2;
            interleave_rows(vs + 2 * k2 * ts, 2 * k2 + 1 < T ? vs + (2 * k2 + 1) * ts : nullptr, out_row, d);
            std::fill(out_row + 2 * d, out_row + 2 * dp, Bf16{0});
          }
          continue;
        }
      }
      std::fill(kt, kt + pack_size, Bf16{0});
      for (i64 t = 0; t < T; ++t)
        for (i64 i = 0; i < d; ++i) {
          kt[((i / 2) * Tl + t) * 2 + i % 2] = b16(ks[t * ts + i * cs]);
          vv[((t / 2) * dp + i) * 2 + t % 2] = b16(vs[t * ts + i * cs]);
        }
    }  // implicit barrier: every pack is complete before any tile reads it

    char* const mine = reinterpret_cast<char*>(tile_store.raw()) + omp_get_thread_num() * per_thread;
    Bf16* const q = reinterpret_cast<Bf16*>(mine);
    float* const sc = reinterpret_cast<float*>(mine + q_bytes);
    Bf16* const pr = reinterpret_cast<Bf16*>(mine + q_bytes + sc_bytes);
    float* const o = reinterpret_cast<float*>(mine + q_bytes + sc_bytes + p_bytes);
    float* const rsum = reinterpret_cast<float*>(mine + q_bytes + sc_bytes + p_bytes + o_bytes);
#pragma omp for schedule(static)
    for (i64 item = 0; item < N * nh * ntiles; ++item) {
      const i64 n = item / (nh * ntiles), h = (item / ntiles) % nh, t0 = (item % ntiles) * tq;
      const i64 m = std::min(tq, T - t0);
      const QkvView v = view_of(n);
      const Bf16* kt = pk + (n * nh + h) * pack_size;
      const Bf16* vv = kt + kt_size;
      const In* qs = v.at(h, 0);
      const i64 ts = v.token_stride(), cs = v.channel_stride();
      for (i64 t = 0; t < m; ++t) {
        if constexpr (kIsBf16<In>) {
          if (cs == 1) {
            std::memcpy(q + t * ldq, qs + (t0 + t) * ts, static_cast<std::size_t>(d) * sizeof(Bf16));
          } else {
            for (i64 i = 0; i < d; ++i) q[t * ldq + i] = qs[(t0 + t) * ts + i * cs];
          }
        } else {
          for (i64 i = 0; i < d; ++i) q[t * ldq + i] = b16(qs[(t0 + t) * ts + i * cs]);
        }
        if (ldq > d) q[t * ldq + d] = 0;
      }
      gemm_bf16(m, Tp, d2, q, ldq, kt, Tl, sc, Tl);
      for (i64 i = 0; i < m; ++i)
        rsum[i] = 1.0f / softmax_row_bf16_avx512(sc + i * Tl, pr + i * ldp, T, scale, ldp > T);
      gemm_bf16(m, dp, T2, pr, ldp, vv, dp, o, dp);
      // Output channel h*d + i of token t0 + t.
      if (nhwc) {
        for (i64 t = 0; t < m; ++t) {
          Out* y = dst + (n * T + t0 + t) * C + h * d;
          for (i64 i = 0; i < d; ++i) y[i] = from_f32<Out>(o[t * dp + i] * rsum[t]);
        }
      } else {
        for (i64 i = 0; i < d; ++i) {
          Out* y = dst + (n * C + h * d + i) * T + t0;
          for (i64 t = 0; t < m; ++t) y[t] = from_f32<Out>(o[t * dp + i] * rsum[t]);
        }
      }
    }
  }
}
#endif

}  // namespace

Tensor attention(const Tensor& qkv, int heads, ops::QkvOrder order, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = qkv.shape();
  Tensor out = Tensor::empty(Shape{s[0], s[1] / 3, s[2], s[3]}, ctx.activations, qkv.layout(), Device::cpu(),
                             out_allocator(ctx));
  if (out.numel() == 0) return out;
  // The matmuls' operands follow the precision, as the convolutions' do (fp16: UnsupportedError).
  onednn::check_precision(ctx.precision, "attention");
  const bool bf16_operands = onednn::bf16_operands(ctx.precision);
  dispatch_activation(qkv.dtype(), "attention", [&](auto in_t) {
    dispatch_activation(out.dtype(), "attention", [&](auto out_t) {
      using In = decltype(in_t);
      using Out = decltype(out_t);
      if (!bf16_operands) {
        attention_impl<In, Out>(qkv, out, heads, order, scope.threads(), out_allocator(ctx), false);
        return;
      }
#if DIFFPROBE_HAVE_AVX512
      if (simd::use_avx512_bf16()) {
        attention_bf16_impl<In, Out>(qkv, out, heads, order, out_allocator(ctx), scope.threads());
        return;
      }
#endif
      attention_impl<In, Out>(qkv, out, heads, order, scope.threads(), out_allocator(ctx), true);
    });
  });
  return out;
}

}  // namespace diffprobe::cpu
