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
#include <limits>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu_ops.hpp"
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

constexpr int kMR = 6, kNV = 4;
using MicroFn = void (*)(i64, const float*, i64, const float*, i64, float*, i64);

template <int MR> constexpr MicroFn micro_for(int nv) {
  return nv == 1   ? gemm_micro<MR, 1>
         : nv == 2 ? gemm_micro<MR, 2>
         : nv == 3 ? gemm_micro<MR, 3>
                   : gemm_micro<MR, 4>;
}

MicroFn micro_table(int mr, int nv) {
  switch (mr) {
    case 1: return micro_for<1>(nv);
    case 2: return micro_for<2>(nv);
    case 3: return micro_for<3>(nv);
    case 4: return micro_for<4>(nv);
    case 5: return micro_for<5>(nv);
    default: return micro_for<6>(nv);
  }
}

DIFFPROBE_AVX512 void gemm_avx512(i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb,
                                  float* C, i64 ldc) {
  // Column panels outermost: a K x 64 panel of B stays in L1 while the rows of A stream past.
  for (i64 j = 0; j < N; j += 16 * kNV) {
    const int nv = static_cast<int>(std::min<i64>(kNV, (N - j) / 16));
    for (i64 i = 0; i < M; i += kMR) {
      const int mr = static_cast<int>(std::min<i64>(kMR, M - i));
      micro_table(mr, nv)(K, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc);
    }
  }
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

template <class In, class Out> void attention_impl(const Tensor& qkv, Tensor& out, int heads,
                                                   ops::QkvOrder order, int threads, Allocator* alloc) {
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

}  // namespace

Tensor attention(const Tensor& qkv, int heads, ops::QkvOrder order, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = qkv.shape();
  Tensor out = Tensor::empty(Shape{s[0], s[1] / 3, s[2], s[3]}, ctx.activations, qkv.layout(), Device::cpu(),
                             out_allocator(ctx));
  if (out.numel() == 0) return out;
  dispatch_activation(qkv.dtype(), "attention", [&](auto in_t) {
    dispatch_activation(out.dtype(), "attention", [&](auto out_t) {
      attention_impl<decltype(in_t), decltype(out_t)>(qkv, out, heads, order, scope.threads(),
                                                      out_allocator(ctx));
    });
  });
  return out;
}

}  // namespace diffprobe::cpu
