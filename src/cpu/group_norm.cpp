// Fused GroupNorm (+ pre-bias, scale-shift, SiLU) on the CPU, NHWC and NCHW.
//
// Statistics: ADM activations can sit far from zero (means of 100+ against unit spread), where
// the textbook E[x^2] - E[x]^2 in fp32 cancels catastrophically. Each channel's values are
// therefore summed relative to that channel's first value (a shift close to its mean), in fp32
// over short blocks and in double across blocks; channels are then merged with Chan's formula in
// double. One read of x for the statistics, one read + one write for the output.
//
// The per-(sample, channel) affine y = ((x - m_hi) - m_lo) * a + b folds mean, rstd, gamma, beta,
// pre_bias and (1 + scale), shift; the apply pass is one multiply-add (and SiLU) per element. The
// shift m is split into two floats: with a mean of 1000, m rounded to fp32 alone would be off by
// up to 3e-5, a visible error once x - m is of order 1.
//
// Work is split into pieces that depend only on the shape, each reduced in a fixed order, so the
// result does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu_ops.hpp"
#include "cpu/simd.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu {
namespace {

using i64 = std::int64_t;

// Pixels summed in fp32 before spilling into double: keeps fp32 partial sums short.
constexpr i64 kBlockPixels = 32;
constexpr i64 kPlaneBlock = 512;

// ---- statistics kernels -------------------------------------------------------------------------

// a1[c] += x[c] - k[c]; a2[c] += (x[c] - k[c])^2 for one NHWC pixel.
template <class In>
DIFFPROBE_INLINE void pixel_sums_body(const In* x, const float* k, float* a1, float* a2, i64 C) {
#pragma omp simd
  for (i64 c = 0; c < C; ++c) {
    const float d = to_f32(x[c]) - k[c];
    a1[c] += d;
    a2[c] += d * d;
  }
}

// Sums of (x - k) and (x - k)^2 over a contiguous run of n values (fp32, n small).
template <class In> DIFFPROBE_INLINE void run_sums_body(const In* x, i64 n, float k, float& s1, float& s2) {
  float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
  for (i64 i = 0; i < n; ++i) {
    const float d = to_f32(x[i]) - k;
    a1 += d;
    a2 += d * d;
  }
  s1 = a1;
  s2 = a2;
}

// Per-channel double sums over pixels [p0, p1) of one NHWC sample.
template <class In> DIFFPROBE_INLINE void nhwc_chunk_sums_body(const In* xs, i64 p0, i64 p1, i64 C,
                                                               const float* k, float* a1, float* a2,
                                                               double* d1, double* d2) {
  std::fill(d1, d1 + C, 0.0);
  std::fill(d2, d2 + C, 0.0);
  for (i64 b = p0; b < p1; b += kBlockPixels) {
    std::fill(a1, a1 + C, 0.0f);
    std::fill(a2, a2 + C, 0.0f);
    const i64 e = std::min(p1, b + kBlockPixels);
    for (i64 p = b; p < e; ++p) pixel_sums_body(xs + p * C, k, a1, a2, C);
#pragma omp simd
    for (i64 c = 0; c < C; ++c) {
      d1[c] += static_cast<double>(a1[c]);
      d2[c] += static_cast<double>(a2[c]);
    }
  }
}

template <class In> void nhwc_chunk_sums_generic(const In* xs, i64 p0, i64 p1, i64 C, const float* k,
                                                 float* a1, float* a2, double* d1, double* d2) {
  nhwc_chunk_sums_body(xs, p0, p1, C, k, a1, a2, d1, d2);
}
#if DIFFPROBE_HAVE_AVX512
// d[0..16) += s in double, for the lanes of m.
DIFFPROBE_AVX512 inline void add_to_doubles(double* d, __m512 s, __mmask16 m) {
  const auto lo = static_cast<__mmask8>(m & 0xff), hi = static_cast<__mmask8>(m >> 8);
  const __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
  const __m512d z = _mm512_cvtps_pd(_mm512_extractf32x8_ps(s, 1));
  _mm512_mask_storeu_pd(d, lo, _mm512_add_pd(_mm512_maskz_loadu_pd(lo, d), a));
  _mm512_mask_storeu_pd(d + 8, hi, _mm512_add_pd(_mm512_maskz_loadu_pd(hi, d + 8), z));
}

// The portable body's sums with the fp32 accumulators in registers instead of memory (which cost
// a load and a store of each accumulator per element): channels [c0, c0 + 16 * NV) of the
// pixels [b, e), added into d1/d2. Only the last vector of a row with C % 16 != 0 is masked
// (masked loads in the main loop run about half as fast on this Zen 5).
template <int NV, bool kMaskLast, class In>
DIFFPROBE_AVX512 void nhwc_block_sums_avx512(const In* xs, i64 b, i64 e, i64 C, i64 c0, __mmask16 last,
                                             const float* k, double* d1, double* d2) {
  __m512 kv[NV], s1[NV], s2[NV];
  for (int v = 0; v < NV; ++v) {
    kv[v] = (kMaskLast && v == NV - 1) ? _mm512_maskz_loadu_ps(last, k + c0 + 16 * v)
                                       : _mm512_loadu_ps(k + c0 + 16 * v);
    s1[v] = _mm512_setzero_ps();
    s2[v] = _mm512_setzero_ps();
  }
  for (i64 p = b; p < e; ++p) {
    const In* xp = xs + p * C + c0;
    for (int v = 0; v < NV; ++v) {
      const __m512 x = (kMaskLast && v == NV - 1) ? simd::load(xp + 16 * v, last) : simd::load(xp + 16 * v);
      const __m512 d = _mm512_sub_ps(x, kv[v]);
      s1[v] = _mm512_add_ps(s1[v], d);
      s2[v] = _mm512_fmadd_ps(d, d, s2[v]);
    }
  }
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = (kMaskLast && v == NV - 1) ? last : 0xffff;
    add_to_doubles(d1 + c0 + 16 * v, s1[v], m);
    add_to_doubles(d2 + c0 + 16 * v, s2[v], m);
  }
}

template <bool kMaskLast, class In>
DIFFPROBE_AVX512 void nhwc_group_sums_avx512(int nv, const In* xs, i64 b, i64 e, i64 C, i64 c0,
                                             __mmask16 last, const float* k, double* d1, double* d2) {
  switch (nv) {
    case 1: nhwc_block_sums_avx512<1, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    case 2: nhwc_block_sums_avx512<2, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    case 3: nhwc_block_sums_avx512<3, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    case 4: nhwc_block_sums_avx512<4, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    case 5: nhwc_block_sums_avx512<5, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    case 6: nhwc_block_sums_avx512<6, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    case 7: nhwc_block_sums_avx512<7, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
    default: nhwc_block_sums_avx512<8, kMaskLast>(xs, b, e, C, c0, last, k, d1, d2); break;
  }
}

template <class In> DIFFPROBE_AVX512 void nhwc_chunk_sums_avx512(const In* xs, i64 p0, i64 p1, i64 C,
                                                                 const float* k, float* /*a1*/, float* /*a2*/,
                                                                 double* d1, double* d2) {
  std::fill(d1, d1 + C, 0.0);
  std::fill(d2, d2 + C, 0.0);
  constexpr i64 kGroup = 8 * 16;  // channels per register set: 8 vectors each of k, s1, s2
  // Block by block (32 pixels, at most 64 KB at 512 channels): a block stays in L1/L2 while its
  // channel groups are summed in turn.
  for (i64 b = p0; b < p1; b += kBlockPixels) {
    const i64 e = std::min(p1, b + kBlockPixels);
    for (i64 c0 = 0; c0 < C; c0 += kGroup) {
      const i64 rem = std::min(kGroup, C - c0);
      const int nv = static_cast<int>((rem + 15) / 16);
      const i64 tail = rem - 16 * (nv - 1);
      if (tail == 16)
        nhwc_group_sums_avx512<false, In>(nv, xs, b, e, C, c0, 0xffff, k, d1, d2);
      else
        nhwc_group_sums_avx512<true, In>(nv, xs, b, e, C, c0, simd::tail_mask(tail), k, d1, d2);
    }
  }
}
#else
template <class In> void nhwc_chunk_sums_avx512(const In* xs, i64 p0, i64 p1, i64 C, const float* k,
                                                float* a1, float* a2, double* d1, double* d2) {
  nhwc_chunk_sums_body(xs, p0, p1, C, k, a1, a2, d1, d2);
}
#endif

template <class In>
DIFFPROBE_INLINE void plane_sums_body(const In* x, i64 n, float k, double& s1, double& s2) {
  double t1 = 0.0, t2 = 0.0;
  for (i64 b = 0; b < n; b += kPlaneBlock) {
    float a1, a2;
    run_sums_body(x + b, std::min(kPlaneBlock, n - b), k, a1, a2);
    t1 += a1;
    t2 += a2;
  }
  s1 = t1;
  s2 = t2;
}

template <class In> void plane_sums_generic(const In* x, i64 n, float k, double& s1, double& s2) {
  plane_sums_body(x, n, k, s1, s2);
}
template <class In>
DIFFPROBE_AVX512 void plane_sums_avx512(const In* x, i64 n, float k, double& s1, double& s2) {
  plane_sums_body(x, n, k, s1, s2);
}

// ---- apply kernels ------------------------------------------------------------------------------

// Per-(sample, channel) coefficients of the apply pass.
struct Affine {
  const float *m_hi, *m_lo, *a, *b;
};

// One NHWC pixel: y[c] = ((x[c] - m_hi[c]) - m_lo[c]) * a[c] + b[c], then SiLU.
// The affine of channel c, the one expression every portable NHWC apply uses.
DIFFPROBE_INLINE float affine(float x, const Affine& f, i64 c) {
  return ((x - f.m_hi[c]) - f.m_lo[c]) * f.a[c] + f.b[c];
}

template <class In, class Out>
void apply_pixel_generic(const In* x, Out* y, const Affine& f, i64 C, bool silu) {
  if (silu) {
    for (i64 c = 0; c < C; ++c) y[c] = from_f32<Out>(simd::silu(affine(to_f32(x[c]), f, c)));
  } else {
#pragma omp simd
    for (i64 c = 0; c < C; ++c) y[c] = from_f32<Out>(affine(to_f32(x[c]), f, c));
  }
}

// The portable pooled apply: the same affine per value, avg_pool2x2's order.
template <class In, class Out>
void apply_pool_row_generic(const In* r0, const In* r1, Out* y, i64 OW, const Affine& f, i64 C, bool silu) {
  for (i64 ow = 0; ow < OW; ++ow)
    for (i64 c = 0; c < C; ++c) {
      const auto one = [&](In v) {
        const float x = to_f32(v);
        return silu ? simd::silu(affine(x, f, c)) : affine(x, f, c);
      };
      const In* p0 = r0 + 2 * ow * C + c;
      const In* p1 = r1 + 2 * ow * C + c;
      y[ow * C + c] = from_f32<Out>(((one(p0[0]) + one(p0[C])) + (one(p1[0]) + one(p1[C]))) * 0.25f);
    }
}

template <class In, class Out>
void apply_plane_generic(const In* x, Out* y, float m_hi, float m_lo, float a, float b, i64 n, bool silu) {
  if (silu) {
    for (i64 i = 0; i < n; ++i) y[i] = from_f32<Out>(simd::silu(((to_f32(x[i]) - m_hi) - m_lo) * a + b));
  } else {
#pragma omp simd
    for (i64 i = 0; i < n; ++i) y[i] = from_f32<Out>(((to_f32(x[i]) - m_hi) - m_lo) * a + b);
  }
}

#if DIFFPROBE_HAVE_AVX512
// The affine (and SiLU) of one vector of channels starting at c (full: the row's main loop).
template <bool kSilu, class In>
DIFFPROBE_AVX512 inline __m512 apply_vector_avx512(const In* x, const Affine& f, i64 c) {
  __m512 v = _mm512_sub_ps(simd::load(x), _mm512_loadu_ps(f.m_hi + c));
  v = _mm512_sub_ps(v, _mm512_loadu_ps(f.m_lo + c));
  v = _mm512_fmadd_ps(v, _mm512_loadu_ps(f.a + c), _mm512_loadu_ps(f.b + c));
  if constexpr (kSilu) v = simd::silu512(v);
  return v;
}

// The same on the lanes of k (a row's last, partial vector).
template <bool kSilu, class In>
DIFFPROBE_AVX512 inline __m512 apply_vector_avx512(const In* x, __mmask16 k, const Affine& f, i64 c) {
  __m512 v = _mm512_sub_ps(simd::load(x, k), _mm512_maskz_loadu_ps(k, f.m_hi + c));
  v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(k, f.m_lo + c));
  v = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, f.a + c), _mm512_maskz_loadu_ps(k, f.b + c));
  if constexpr (kSilu) v = simd::silu512(v);
  return v;
}

// One NHWC pixel through the affine (and SiLU).
template <bool kSilu, class In, class Out>
DIFFPROBE_AVX512 void apply_pixel_avx512(const In* x, Out* y, const Affine& f, i64 C) {
  i64 c = 0;
  for (; c + 16 <= C; c += 16) simd::store(y + c, apply_vector_avx512<kSilu>(x + c, f, c));
  if (c < C) {
    const __mmask16 k = simd::tail_mask(C - c);
    simd::store(y + c, apply_vector_avx512<kSilu>(x + c, k, f, c), k);
  }
}

// One output row of the pooled apply (avg_pool2x2 after the affine and SiLU): r0, r1 are input
// rows 2*oh and 2*oh + 1. Each input value goes through apply_pixel_avx512's vector helper and
// the four are averaged in avg_pool2x2's order, so the result is bitwise that of the two ops.
template <bool kSilu, class In, class Out>
DIFFPROBE_AVX512 void apply_pool_row_avx512(const In* r0, const In* r1, Out* y, i64 OW, const Affine& f,
                                            i64 C) {
  const __m512 quarter = _mm512_set1_ps(0.25f);
  for (i64 ow = 0; ow < OW; ++ow) {
    const In *p0 = r0 + 2 * ow * C, *p1 = r1 + 2 * ow * C;
    Out* yo = y + ow * C;
    i64 c = 0;
    for (; c + 16 <= C; c += 16) {
      const __m512 top = _mm512_add_ps(apply_vector_avx512<kSilu>(p0 + c, f, c),
                                       apply_vector_avx512<kSilu>(p0 + C + c, f, c));
      const __m512 bottom = _mm512_add_ps(apply_vector_avx512<kSilu>(p1 + c, f, c),
                                          apply_vector_avx512<kSilu>(p1 + C + c, f, c));
      simd::store(yo + c, _mm512_mul_ps(_mm512_add_ps(top, bottom), quarter));
    }
    if (c < C) {
      const __mmask16 k = simd::tail_mask(C - c);
      const __m512 top = _mm512_add_ps(apply_vector_avx512<kSilu>(p0 + c, k, f, c),
                                       apply_vector_avx512<kSilu>(p0 + C + c, k, f, c));
      const __m512 bottom = _mm512_add_ps(apply_vector_avx512<kSilu>(p1 + c, k, f, c),
                                          apply_vector_avx512<kSilu>(p1 + C + c, k, f, c));
      simd::store(yo + c, _mm512_mul_ps(_mm512_add_ps(top, bottom), quarter), k);
    }
  }
}

template <bool kSilu, class In, class Out> DIFFPROBE_AVX512 void apply_plane_avx512(const In* x, Out* y,
                                                                                    float m_hi, float m_lo,
                                                                                    float a, float b, i64 n) {
  const __m512 vm = _mm512_set1_ps(m_hi), vl = _mm512_set1_ps(m_lo), va = _mm512_set1_ps(a),
               vb = _mm512_set1_ps(b);
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_sub_ps(simd::load(x + i), vm), vl), va, vb);
    if constexpr (kSilu) v = simd::silu512(v);
    simd::store(y + i, v);
  }
  if (i < n) {
    const __mmask16 k = simd::tail_mask(n - i);
    __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_sub_ps(simd::load(x + i, k), vm), vl), va, vb);
    if constexpr (kSilu) v = simd::silu512(v);
    simd::store(y + i, v, k);
  }
}
#endif

template <class In, class Out> void group_norm_impl(const Tensor& x, Tensor& out, const Tensor& gamma,
                                                    const Tensor& beta, const ops::GroupNormArgs& args,
                                                    Allocator* alloc) {
  const Shape& s = x.shape();
  const i64 N = s[0], C = s[1], HW = s[2] * s[3], G = args.groups, cg = C / G;
  const bool nhwc = x.layout() == Layout::NHWC;
  const bool pool = args.avg_pool2x2;
  const i64 H = s[2], W = s[3], OH = pool ? H / 2 : H, OW = pool ? W / 2 : W;
  (void)OW;
  const In* xp = elems<const In>(x);
  Out* yp = elems<Out>(out);
  const float* gp = gamma.data<float>();
  const float* bp = beta.data<float>();
  const float* pb = args.pre_bias.defined() ? args.pre_bias.data<float>() : nullptr;
  const float* ss = args.scale_shift.defined() ? args.scale_shift.data<float>() : nullptr;
  const bool avx = simd::use_avx512();

  // Per-(sample, channel) shift: the channel's first value.
  std::vector<float> shift(static_cast<std::size_t>(N * C));
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c) shift[n * C + c] = to_f32(xp[nhwc ? n * HW * C + c : (n * C + c) * HW]);

  std::vector<double> s1(static_cast<std::size_t>(N * C)), s2(static_cast<std::size_t>(N * C));
  // NHWC: pixel chunks of at least ~16K values, each giving per-channel sums, merged in chunk
  // order; at most kMaxChunks per sample, because every chunk keeps 2 * C doubles of partial sums
  // (uncapped, 33 MB at batch 8 of 256x256x256: a fresh mapping, faulted in page by page, on
  // every call). NCHW: one channel plane per item.
  constexpr i64 kMaxChunks = 64;
  const i64 chunk = std::max({kBlockPixels, 16384 / C, (HW + kMaxChunks - 1) / kMaxChunks});
  const i64 nchunks = (HW + chunk - 1) / chunk;
  // From the context's allocator (2 MB at batch 8 of 256x256x256: malloc would map it afresh, and
  // the kernel zero-fill it page by page, on every call); every chunk writes all of its part.
  const Tensor part_store = Tensor::empty(Shape{nhwc ? N * nchunks * C * 4 : 0}, DType::F32,
                                          Layout::Contiguous, Device::cpu(), alloc);
  double* const part = nhwc ? reinterpret_cast<double*>(part_store.raw()) : nullptr;
  std::vector<float> am(static_cast<std::size_t>(N * C)), al(am.size()), aa(am.size()), ab(am.size());
  const bool silu = args.silu;

  // One parallel region for all three phases: a fork/join costs more than a small image's work.
#pragma omp parallel
  {
    if (nhwc) {
      std::vector<float> a1(static_cast<std::size_t>(C)), a2(static_cast<std::size_t>(C));
#pragma omp for schedule(static)
      for (i64 item = 0; item < N * nchunks; ++item) {
        const i64 n = item / nchunks, p0 = (item % nchunks) * chunk, p1 = std::min(HW, p0 + chunk);
        double* d1 = part + item * C * 2;
        double* d2 = d1 + C;
        const In* xs = xp + n * HW * C;
        if (avx)
          nhwc_chunk_sums_avx512(xs, p0, p1, C, shift.data() + n * C, a1.data(), a2.data(), d1, d2);
        else
          nhwc_chunk_sums_generic(xs, p0, p1, C, shift.data() + n * C, a1.data(), a2.data(), d1, d2);
      }
    } else {
#pragma omp for schedule(static)
      for (i64 nc = 0; nc < N * C; ++nc) {
        if (avx)
          plane_sums_avx512(xp + nc * HW, HW, shift[nc], s1[nc], s2[nc]);
        else
          plane_sums_generic(xp + nc * HW, HW, shift[nc], s1[nc], s2[nc]);
      }
    }

#pragma omp single
    {
      if (nhwc)
        for (i64 n = 0; n < N; ++n)
          for (i64 ch = 0; ch < nchunks; ++ch) {
            const double* d1 = part + (n * nchunks + ch) * C * 2;
            for (i64 c = 0; c < C; ++c) {
              s1[n * C + c] += d1[c];
              s2[n * C + c] += d1[C + c];
            }
          }
      // Group statistics (Chan's merge of per-channel mean / M2, in double) folded into the affine.
      const double M = static_cast<double>(HW);
      for (i64 n = 0; n < N; ++n) {
        for (i64 g = 0; g < G; ++g) {
          const i64 c0 = n * C + g * cg;
          const auto channel_mean = [&](i64 j) {
            return shift[c0 + j] + s1[c0 + j] / M + (pb ? pb[c0 + j] : 0.0);
          };
          double mean = 0.0;
          for (i64 j = 0; j < cg; ++j) mean += channel_mean(j);
          mean /= static_cast<double>(cg);
          double m2 = 0.0;
          for (i64 j = 0; j < cg; ++j) {
            const double dm = channel_mean(j) - mean;
            m2 += std::max(0.0, s2[c0 + j] - s1[c0 + j] * s1[c0 + j] / M) + M * dm * dm;
          }
          const double rstd =
              1.0 / std::sqrt(m2 / (M * static_cast<double>(cg)) + static_cast<double>(args.eps));
          for (i64 j = 0; j < cg; ++j) {
            const i64 c = g * cg + j;
            const double sc = ss ? 1.0 + ss[n * 2 * C + c] : 1.0;
            const double sh = ss ? ss[n * 2 * C + C + c] : 0.0;
            const double m = mean - (pb ? pb[c0 + j] : 0.0);
            am[c0 + j] = static_cast<float>(m);
            al[c0 + j] = static_cast<float>(m - static_cast<double>(am[c0 + j]));
            aa[c0 + j] = static_cast<float>(rstd * gp[c] * sc);
            ab[c0 + j] = static_cast<float>(bp[c] * sc + sh);
          }
        }
      }
    }  // implicit barrier: the coefficients are ready

    if (pool) {
#pragma omp for schedule(static)
      for (i64 row = 0; row < N * OH; ++row) {
        const i64 n = row / OH, oh = row % OH;
        const In* r0 = xp + (n * H + 2 * oh) * W * C;
        const In* r1 = r0 + W * C;
        Out* yr = yp + row * OW * C;
        const Affine f{am.data() + n * C, al.data() + n * C, aa.data() + n * C, ab.data() + n * C};
#if DIFFPROBE_HAVE_AVX512
        if (avx) {
          if (silu)
            apply_pool_row_avx512<true>(r0, r1, yr, OW, f, C);
          else
            apply_pool_row_avx512<false>(r0, r1, yr, OW, f, C);
          continue;
        }
#endif
        apply_pool_row_generic(r0, r1, yr, OW, f, C, silu);
      }
    } else if (nhwc) {
#pragma omp for schedule(static)
      for (i64 row = 0; row < N * HW; ++row) {
        const i64 n = row / HW;
        const In* xr = xp + row * C;
        Out* yr = yp + row * C;
        const Affine f{am.data() + n * C, al.data() + n * C, aa.data() + n * C, ab.data() + n * C};
#if DIFFPROBE_HAVE_AVX512
        if (avx) {
          if (silu)
            apply_pixel_avx512<true>(xr, yr, f, C);
          else
            apply_pixel_avx512<false>(xr, yr, f, C);
          continue;
        }
#endif
        apply_pixel_generic(xr, yr, f, C, silu);
      }
    } else {
#pragma omp for schedule(static)
      for (i64 nc = 0; nc < N * C; ++nc) {
        const In* xr = xp + nc * HW;
        Out* yr = yp + nc * HW;
#if DIFFPROBE_HAVE_AVX512
        if (avx) {
          if (silu)
            apply_plane_avx512<true>(xr, yr, am[nc], al[nc], aa[nc], ab[nc], HW);
          else
            apply_plane_avx512<false>(xr, yr, am[nc], al[nc], aa[nc], ab[nc], HW);
          continue;
        }
#endif
        apply_plane_generic(xr, yr, am[nc], al[nc], aa[nc], ab[nc], HW, silu);
      }
    }
  }
}

}  // namespace

Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const ops::GroupNormArgs& args,
                  const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = x.shape();
  if (args.avg_pool2x2 &&
      x.layout() != Layout::NHWC) {  // fused for NHWC (the U-Net's layout); NCHW: the two ops
    ops::GroupNormArgs plain = args;
    plain.avg_pool2x2 = false;
    return cpu::avg_pool2x2(cpu::group_norm(x, gamma, beta, plain, ctx), ctx);
  }
  const bool pool = args.avg_pool2x2;
  const Shape out_shape{s[0], s[1], pool ? s[2] / 2 : s[2], pool ? s[3] / 2 : s[3]};
  Tensor out = Tensor::empty(out_shape, ctx.activations, x.layout(), Device::cpu(), out_allocator(ctx));
  if (x.numel() == 0) return out;
  dispatch_activation(x.dtype(), "group_norm", [&](auto in_t) {
    dispatch_activation(out.dtype(), "group_norm", [&](auto out_t) {
      group_norm_impl<decltype(in_t), decltype(out_t)>(x, out, gamma, beta, args, out_allocator(ctx));
    });
  });
  return out;
}

}  // namespace diffprobe::cpu
