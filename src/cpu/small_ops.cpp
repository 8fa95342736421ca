// The U-Net's small CPU ops: SiLU, add, 2x2 average pool, nearest x2 upsampling, channel
// concatenation, adaptive pooling and the timestep embedding. All are memory-bound: each makes one
// pass over its input, parallelised over rows (NHWC: pixels with contiguous channels; NCHW:
// planes), with contiguous inner loops the compiler vectorises.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu_ops.hpp"
#include "cpu/simd.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu {
namespace {

using i64 = std::int64_t;

constexpr i64 kFlatBlock = 16384;  // elements per parallel work item of flat elementwise ops

// An activation output of x's layout, in the context's activation dtype.
Tensor like(const Tensor& x, const Shape& shape, const ExecContext& ctx) {
  return Tensor::empty(shape, ctx.activations, x.layout(), Device::cpu(), out_allocator(ctx));
}

// Calls f(In{}, Out{}) for the dtypes of an op's input and output (each f32 or bf16).
template <class F> void dispatch2(DType in, DType out, const char* where, F&& f) {
  dispatch_activation(in, where, [&](auto i) { dispatch_activation(out, where, [&](auto o) { f(i, o); }); });
}

// y[0, n) = x[0, n) converted (a plain copy when the types agree).
template <class In, class Out> void convert_run(const In* x, Out* y, i64 n) {
  if constexpr (std::is_same_v<In, Out>) {
    std::memcpy(y, x, static_cast<std::size_t>(n) * sizeof(In));
  } else {
    for (i64 i = 0; i < n; ++i) y[i] = from_f32<Out>(to_f32(x[i]));
  }
}

template <class In, class Out> void silu_generic(const In* x, Out* y, i64 n) {
  for (i64 i = 0; i < n; ++i) y[i] = from_f32<Out>(simd::silu(to_f32(x[i])));
}

#if DIFFPROBE_HAVE_AVX512
template <class In, class Out> DIFFPROBE_AVX512 void silu_avx512(const In* x, Out* y, i64 n) {
  i64 i = 0;
  for (; i + 16 <= n; i += 16) simd::store(y + i, simd::silu512(simd::load(x + i)));
  if (i < n) {
    const __mmask16 k = simd::tail_mask(n - i);
    simd::store(y + i, simd::silu512(simd::load(x + i, k)), k);
  }
}

// One NHWC output row of the 2x2 average pool: r0, r1 are input rows 2*oh and 2*oh + 1.
template <class In, class Out>
DIFFPROBE_AVX512 void avg_pool_row_avx512(const In* r0, const In* r1, Out* y, i64 OW, i64 C) {
  const __m512 quarter = _mm512_set1_ps(0.25f);
  for (i64 ow = 0; ow < OW; ++ow) {
    const In *a = r0 + 2 * ow * C, *b = r1 + 2 * ow * C;
    Out* yo = y + ow * C;
    i64 c = 0;
    for (; c + 16 <= C; c += 16) {
      const __m512 top = _mm512_add_ps(simd::load(a + c), simd::load(a + C + c));
      const __m512 bottom = _mm512_add_ps(simd::load(b + c), simd::load(b + C + c));
      simd::store(yo + c, _mm512_mul_ps(_mm512_add_ps(top, bottom), quarter));
    }
    if (c < C) {
      const __mmask16 k = simd::tail_mask(C - c);
      const __m512 top = _mm512_add_ps(simd::load(a + c, k), simd::load(a + C + c, k));
      const __m512 bottom = _mm512_add_ps(simd::load(b + c, k), simd::load(b + C + c, k));
      simd::store(yo + c, _mm512_mul_ps(_mm512_add_ps(top, bottom), quarter), k);
    }
  }
}
#endif

}  // namespace

Tensor silu(const Tensor& x, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  Tensor out = like(x, x.shape(), ctx);
  dispatch2(x.dtype(), out.dtype(), "silu", [&](auto in_t, auto out_t) {
    using In = decltype(in_t);
    using Out = decltype(out_t);
    const In* xp = elems<const In>(x);
    Out* yp = elems<Out>(out);
    const i64 n = x.numel(), blocks = (n + kFlatBlock - 1) / kFlatBlock;
    const bool avx = simd::use_avx512();
    (void)avx;
#pragma omp parallel for schedule(static)
    for (i64 b = 0; b < blocks; ++b) {
      const i64 i0 = b * kFlatBlock, len = std::min(kFlatBlock, n - i0);
#if DIFFPROBE_HAVE_AVX512
      if (avx) {
        silu_avx512(xp + i0, yp + i0, len);
        continue;
      }
#endif
      silu_generic(xp + i0, yp + i0, len);
    }
  });
  return out;
}

Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  Tensor out = like(a, a.shape(), ctx);
  dispatch2(a.dtype(), out.dtype(), "add", [&](auto a_t, auto out_t) {
    dispatch_activation(b.dtype(), "add", [&](auto b_t) {
      using A = decltype(a_t);
      using B = decltype(b_t);
      using Out = decltype(out_t);
      const A* ap = elems<const A>(a);
      const B* bp = elems<const B>(b);
      Out* yp = elems<Out>(out);
      const i64 n = a.numel();
#pragma omp parallel for simd schedule(static)
      for (i64 i = 0; i < n; ++i) yp[i] = from_f32<Out>(to_f32(ap[i]) + to_f32(bp[i]));
    });
  });
  return out;
}

Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = x.shape();
  const i64 N = s[0], C = s[1], H = s[2], W = s[3], OH = H / 2, OW = W / 2;
  Tensor out = like(x, Shape{N, C, OH, OW}, ctx);
  dispatch2(x.dtype(), out.dtype(), "avg_pool2x2", [&](auto in_t, auto out_t) {
    using In = decltype(in_t);
    using Out = decltype(out_t);
    const In* xp = elems<const In>(x);
    Out* yp = elems<Out>(out);
    const auto mean4 = [](In a, In b, In c, In d) {
      return from_f32<Out>(((to_f32(a) + to_f32(b)) + (to_f32(c) + to_f32(d))) * 0.25f);
    };
    if (x.layout() == Layout::NHWC) {
      const bool avx = simd::use_avx512();
      (void)avx;
#pragma omp parallel for schedule(static)
      for (i64 row = 0; row < N * OH; ++row) {
        const i64 n = row / OH, oh = row % OH;
        const In* r0 = xp + ((n * H + 2 * oh) * W) * C;
        const In* r1 = r0 + W * C;
        Out* y = yp + row * OW * C;
#if DIFFPROBE_HAVE_AVX512
        if (avx) {
          avg_pool_row_avx512(r0, r1, y, OW, C);
          continue;
        }
#endif
        for (i64 ow = 0; ow < OW; ++ow) {
          const In *a = r0 + 2 * ow * C, *b = r1 + 2 * ow * C;
          Out* yo = y + ow * C;
#pragma omp simd
          for (i64 c = 0; c < C; ++c) yo[c] = mean4(a[c], a[C + c], b[c], b[C + c]);
        }
      }
    } else {
#pragma omp parallel for schedule(static)
      for (i64 row = 0; row < N * C * OH; ++row) {
        const i64 plane = row / OH, oh = row % OH;
        const In* r0 = xp + (plane * H + 2 * oh) * W;
        const In* r1 = r0 + W;
        Out* y = yp + row * OW;
        for (i64 ow = 0; ow < OW; ++ow) y[ow] = mean4(r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1]);
      }
    }
  });
  return out;
}

Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = x.shape();
  const i64 N = s[0], C = s[1], H = s[2], W = s[3], OH = 2 * H, OW = 2 * W;
  Tensor out = like(x, Shape{N, C, OH, OW}, ctx);
  dispatch2(x.dtype(), out.dtype(), "upsample_nearest2x", [&](auto in_t, auto out_t) {
    using In = decltype(in_t);
    using Out = decltype(out_t);
    const In* xp = elems<const In>(x);
    Out* yp = elems<Out>(out);
    if (x.layout() == Layout::NHWC) {
#pragma omp parallel for schedule(static)
      for (i64 row = 0; row < N * OH; ++row) {
        const i64 n = row / OH, oh = row % OH;
        const In* src = xp + (n * H + oh / 2) * W * C;
        Out* y = yp + row * OW * C;
        for (i64 w = 0; w < W; ++w) {
          convert_run(src + w * C, y + 2 * w * C, C);
          std::memcpy(y + (2 * w + 1) * C, y + 2 * w * C, static_cast<std::size_t>(C) * sizeof(Out));
        }
      }
    } else {
#pragma omp parallel for schedule(static)
      for (i64 row = 0; row < N * C * OH; ++row) {
        const i64 plane = row / OH, oh = row % OH;
        const In* src = xp + (plane * H + oh / 2) * W;
        Out* y = yp + row * OW;
        for (i64 w = 0; w < W; ++w) y[2 * w] = y[2 * w + 1] = from_f32<Out>(to_f32(src[w]));
      }
    }
  });
  return out;
}

Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = a.shape();
  const i64 N = s[0], Ca = s[1], Cb = b.shape()[1], HW = s[2] * s[3], C = Ca + Cb;
  Tensor out = like(a, Shape{N, C, s[2], s[3]}, ctx);
  dispatch2(a.dtype(), out.dtype(), "concat_channels", [&](auto a_t, auto out_t) {
    dispatch_activation(b.dtype(), "concat_channels", [&](auto b_t) {
      using A = decltype(a_t);
      using B = decltype(b_t);
      using Out = decltype(out_t);
      const A* ap = elems<const A>(a);
      const B* bp = elems<const B>(b);
      Out* yp = elems<Out>(out);
      if (a.layout() == Layout::NHWC) {
#pragma omp parallel for schedule(static)
        for (i64 p = 0; p < N * HW; ++p) {
          convert_run(ap + p * Ca, yp + p * C, Ca);
          convert_run(bp + p * Cb, yp + p * C + Ca, Cb);
        }
      } else {
        // Channel planes are contiguous: one copy per (sample, channel).
#pragma omp parallel for schedule(static)
        for (i64 nc = 0; nc < N * C; ++nc) {
          const i64 n = nc / C, c = nc % C;
          if (c < Ca)
            convert_run(ap + (n * Ca + c) * HW, yp + nc * HW, HW);
          else
            convert_run(bp + (n * Cb + (c - Ca)) * HW, yp + nc * HW, HW);
        }
      }
    });
  });
  return out;
}

Tensor adaptive_pool2d(const Tensor& x, int out_h, int out_w, bool max, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const Shape& s = x.shape();
  const i64 N = s[0], C = s[1], H = s[2], W = s[3], OH = out_h, OW = out_w;
  // Pooled features are f32 whatever the activations' dtype (sums in double).
  Tensor out = Tensor::empty(Shape{N, C, OH, OW}, DType::F32, x.layout(), Device::cpu(), out_allocator(ctx));
  dispatch_activation(x.dtype(), "adaptive_pool2d", [&](auto in_t) {
    using In = decltype(in_t);
    const In* xp = elems<const In>(x);
    float* yp = out.data<float>();
    // PyTorch's windows: [floor(i * in / out), ceil((i + 1) * in / out)).
    const auto start = [](i64 i, i64 in, i64 o) { return i * in / o; };
    const auto end = [](i64 i, i64 in, i64 o) { return ((i + 1) * in + o - 1) / o; };
    // NaN wins a max, as in PyTorch.
    const auto take_max = [](float m, float v) { return (v > m || std::isnan(v)) ? v : m; };

    if (x.layout() == Layout::NHWC) {
#pragma omp parallel
      {
        std::vector<double> acc(static_cast<std::size_t>(C));
#pragma omp for schedule(static)
        for (i64 cell = 0; cell < N * OH * OW; ++cell) {
          const i64 n = cell / (OH * OW), oh = (cell / OW) % OH, ow = cell % OW;
          const i64 h0 = start(oh, H, OH), h1 = end(oh, H, OH), w0 = start(ow, W, OW), w1 = end(ow, W, OW);
          float* y = yp + cell * C;
          if (max) {
            convert_run(xp + ((n * H + h0) * W + w0) * C, y, C);
            for (i64 h = h0; h < h1; ++h)
              for (i64 w = w0; w < w1; ++w) {
                const In* px = xp + ((n * H + h) * W + w) * C;
                for (i64 c = 0; c < C; ++c) y[c] = take_max(y[c], to_f32(px[c]));
              }
          } else {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (i64 h = h0; h < h1; ++h)
              for (i64 w = w0; w < w1; ++w) {
                const In* px = xp + ((n * H + h) * W + w) * C;
#pragma omp simd
                for (i64 c = 0; c < C; ++c) acc[c] += to_f32(px[c]);
              }
            const double inv = 1.0 / static_cast<double>((h1 - h0) * (w1 - w0));
            for (i64 c = 0; c < C; ++c) y[c] = static_cast<float>(acc[c] * inv);
          }
        }
      }
    } else {
#pragma omp parallel for schedule(static)
      for (i64 row = 0; row < N * C * OH; ++row) {
        const i64 plane = row / OH, oh = row % OH;
        const i64 h0 = start(oh, H, OH), h1 = end(oh, H, OH);
        const In* xs = xp + plane * H * W;
        for (i64 ow = 0; ow < OW; ++ow) {
          const i64 w0 = start(ow, W, OW), w1 = end(ow, W, OW);
          float m = to_f32(xs[h0 * W + w0]);
          double sum = 0.0;
          for (i64 h = h0; h < h1; ++h)
            for (i64 w = w0; w < w1; ++w) {
              const float v = to_f32(xs[h * W + w]);
              m = take_max(m, v);
              sum += v;
            }
          yp[row * OW + ow] = max ? m : static_cast<float>(sum / static_cast<double>((h1 - h0) * (w1 - w0)));
        }
      }
    }
  });
  return out;
}

Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx) {
  ThreadScope scope(ctx.threads);
  const i64 N = t.shape()[0], half = dim / 2;
  Tensor out =
      Tensor::empty(Shape{N, dim}, DType::F32, Layout::Contiguous, Device::cpu(), out_allocator(ctx));
  const float* tp = t.data<float>();
  float* yp = out.data<float>();
  // The frequencies and arguments are rounded to fp32 step by step as in ADM's PyTorch code
  // (exp(-ln(10000) * arange(half, float32) / half), then t * freq): at t ~ 1000 an fp32 argument
  // is off the exact one by ~1e-4, so computing it in double would not match the checkpoints.
  std::vector<float> freq(static_cast<std::size_t>(half));
  const float neg_log = static_cast<float>(-std::log(10000.0));
  for (i64 i = 0; i < half; ++i)
    freq[i] = std::exp(neg_log * static_cast<float>(i) / static_cast<float>(half));
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* y = yp + n * dim;
    for (i64 i = 0; i < half; ++i) {
      const double arg = static_cast<double>(tp[n] * freq[i]);
      y[i] = static_cast<float>(std::cos(arg));
      y[half + i] = static_cast<float>(std::sin(arg));
    }
    if (dim % 2) y[dim - 1] = 0.0f;
  }
  return out;
}

}  // namespace diffprobe::cpu
