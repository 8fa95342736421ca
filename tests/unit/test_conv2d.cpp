// Conv2d on the CPU (oneDNN) against a direct double-precision loop: kernel sizes, strides,
// bias, fused residual, batch, odd and non-square sizes, both layouts, per-shape caching,
// thread counts, bf16, and the typed errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cpu/cpu_ops.hpp"
#include "cpu/onednn_common.hpp"
#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;
using ops::Conv2d;
using ops::Conv2dSpec;

namespace {

std::vector<float> random_values(std::int64_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// Plain convolution in double. x: [N, I, H, W], w: [O, I, k, k], res: [N, O, OH, OW] (all
// row-major NCHW); bias and res may be empty.
std::vector<double> reference_conv(const std::vector<float>& x, const std::vector<float>& w,
                                   const std::vector<float>& b, const std::vector<float>& res, std::int64_t N,
                                   std::int64_t I, std::int64_t H, std::int64_t W, std::int64_t O,
                                   std::int64_t k, std::int64_t stride, std::int64_t pad) {
  const std::int64_t OH = (H + 2 * pad - k) / stride + 1, OW = (W + 2 * pad - k) / stride + 1;
  std::vector<double> y(static_cast<std::size_t>(N * O * OH * OW));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t oh = 0; oh < OH; ++oh)
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          double acc = b.empty() ? 0.0 : b[static_cast<std::size_t>(o)];
          for (std::int64_t i = 0; i < I; ++i)
            for (std::int64_t kh = 0; kh < k; ++kh) {
              const std::int64_t ih = oh * stride - pad + kh;
              if (ih < 0 || ih >= H) continue;
              for (std::int64_t kw = 0; kw < k; ++kw) {
                const std::int64_t iw = ow * stride - pad + kw;
                if (iw < 0 || iw >= W) continue;
                acc += static_cast<double>(x[static_cast<std::size_t>(((n * I + i) * H + ih) * W + iw)]) *
                       static_cast<double>(w[static_cast<std::size_t>(((o * I + i) * k + kh) * k + kw)]);
              }
            }
          const auto yi = static_cast<std::size_t>(((n * O + o) * OH + oh) * OW + ow);
          y[yi] = acc + (res.empty() ? 0.0 : static_cast<double>(res[yi]));
        }
  return y;
}

// Whether this CPU should run bf16 natively; "maybe" when an ISA limit is set in the environment.
enum class Expect { Yes, No, Maybe };
Expect expect_bf16() {
  if (std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA")) return Expect::Maybe;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") ? Expect::Yes : Expect::No;
#else
  return Expect::No;
#endif
}

struct ConvCase {
  std::int64_t N, I, O, H, W, k;
  int stride, pad;
  bool bias, residual;
  Layout layout, residual_layout;
};

std::string case_name(const ConvCase& c) {
  return "n" + std::to_string(c.N) + "_" + std::to_string(c.I) + "to" + std::to_string(c.O) + "_" +
         std::to_string(c.H) + "x" + std::to_string(c.W) + "_k" + std::to_string(c.k) + "s" +
         std::to_string(c.stride) + "p" + std::to_string(c.pad) + (c.bias ? "_bias" : "") +
         (c.residual ? (c.residual_layout == c.layout ? "_res" : "_resOtherLayout") : "") + "_" +
         layout_name(c.layout);
}

// Weights, input and residual of a case, plus its reference output.
struct ConvProblem {
  explicit ConvProblem(const ConvCase& c, unsigned seed = 1) : c(c) {
    wv = random_values(c.O * c.I * c.k * c.k, seed);
    if (c.bias) bv = random_values(c.O, seed + 1);
    xv = random_values(c.N * c.I * c.H * c.W, seed + 2);
    conv = Conv2d(Tensor::from_vector(Shape{c.O, c.I, c.k, c.k}, wv),
                  c.bias ? Tensor::from_vector(Shape{c.O}, bv) : Tensor(), Conv2dSpec{c.stride, c.pad});
    x = Tensor::from_vector(Shape{c.N, c.I, c.H, c.W}, xv, c.layout);
    const Shape out = conv.output_shape(x.shape());
    if (c.residual) {
      rv = random_values(out.numel(), seed + 3, 4.0f);
      res = Tensor::from_vector(out, rv, c.residual_layout);
    }
    ref = reference_conv(xv, wv, bv, rv, c.N, c.I, c.H, c.W, c.O, c.k, c.stride, c.pad);
  }
  ConvCase c;
  std::vector<float> wv, bv, xv, rv;
  Conv2d conv;
  Tensor x, res;
  std::vector<double> ref;
};

class Conv2dCases : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Conv2dCases, MatchesDoubleReferenceFp32) {
  ConvProblem p(GetParam());
  ExecContext ctx;
  ctx.threads = 2;
  const Tensor y = p.conv.forward_add(p.x, p.res, ctx);
  EXPECT_EQ(y.shape(), p.conv.output_shape(p.x.shape()));
  EXPECT_EQ(y.layout(), p.x.layout());
  EXPECT_EQ(y.dtype(), DType::F32);
  const double err = worst_relative_error(y, p.ref);
  std::printf("[ conv fp32 %s ] worst relative error %.3g\n", case_name(GetParam()).c_str(), err);
  EXPECT_LE(err, 1e-4);
}

TEST_P(Conv2dCases, MatchesDoubleReferenceBf16OrIsUnsupported) {
  ConvProblem p(GetParam());
  ExecContext ctx;
  ctx.threads = 2;
  ctx.precision = Precision::BF16;
  const Expect expect = expect_bf16();
  Tensor y;
  try {
    y = p.conv.forward_add(p.x, p.res, ctx);
  } catch (const UnsupportedError& e) {
    EXPECT_NE(expect, Expect::Yes) << "this CPU has AVX512-BF16 but bf16 failed: " << e.what();
    return;
  }
  EXPECT_NE(expect, Expect::No) << "bf16 ran on a CPU without AVX512-BF16";
  const double err = worst_relative_error(y, p.ref);
  std::printf("[ conv bf16 %s ] worst relative error %.3g\n", case_name(GetParam()).c_str(), err);
  EXPECT_LE(err, 1e-2);
  EXPECT_GT(err, 0.0);  // bf16 rounding must show: proves the input and weights really went through bf16
}

constexpr Layout NHWC = Layout::NHWC;
constexpr Layout NCHW = Layout::Contiguous;

INSTANTIATE_TEST_SUITE_P(
    Shapes, Conv2dCases,
    ::testing::Values(
        // N, I, O, H, W, k, stride, pad, bias, residual, layout, residual layout
        ConvCase{1, 32, 32, 8, 8, 3, 1, 1, true, false, NHWC, NHWC},
        ConvCase{3, 32, 96, 7, 9, 3, 1, 1, true, true, NHWC, NHWC},
        ConvCase{1, 96, 192, 13, 5, 3, 2, 1, true, false, NHWC, NHWC},
        ConvCase{3, 192, 32, 9, 7, 1, 1, 0, false, true, NCHW, NCHW},
        ConvCase{1, 320, 320, 13, 5, 3, 1, 1, true, true, NHWC, NHWC},
        ConvCase{2, 320, 96, 7, 9, 3, 2, 1, false, false, NCHW, NCHW},
        ConvCase{1, 3, 32, 11, 11, 3, 1, 1, true, false, NHWC, NHWC},   // the U-Net's input conv
        ConvCase{1, 192, 320, 7, 9, 1, 1, 0, true, false, NHWC, NHWC},  // 1x1 channel change
        ConvCase{3, 96, 32, 13, 5, 3, 1, 1, true, true, NCHW, NCHW},
        ConvCase{1, 32, 96, 12, 10, 3, 2, 1, true, true, NHWC, NHWC},  // stride 2, even sizes
        ConvCase{1, 32, 32, 9, 7, 5, 1, 2, true, false, NHWC, NHWC},   // any odd kernel
        ConvCase{1, 96, 32, 9, 7, 1, 2, 0, false, false, NHWC, NHWC},  // 1x1 stride 2
        ConvCase{2, 32, 32, 7, 9, 3, 1, 0, true, false, NHWC, NHWC},   // no padding
        ConvCase{2, 32, 96, 7, 9, 3, 1, 1, true, true, NHWC, NCHW},    // residual in the other layout
        ConvCase{2, 32, 96, 7, 9, 3, 1, 1, false, true, NCHW, NHWC},
        ConvCase{1, 512, 640, 6, 5, 3, 1, 1, true, true, NHWC, NHWC}),  // 11.8 MB: packed in its own mapping
    [](const ::testing::TestParamInfo<ConvCase>& info) { return case_name(info.param); });

TEST(Conv2d, SameOpServesSeveralShapesAndLayouts) {
  // One op, shapes and layouts alternating: every call must use the plan of its own shape.
  ConvProblem a(ConvCase{1, 32, 96, 7, 9, 3, 1, 1, true, false, NHWC, NHWC});
  const std::vector<ConvCase> others = {
      {3, 32, 96, 13, 5, 3, 1, 1, true, false, NHWC, NHWC},
      {2, 32, 96, 7, 9, 3, 1, 1, true, false, NCHW, NCHW},
      {1, 32, 96, 7, 9, 3, 1, 1, true, true, NHWC, NHWC},
  };
  ExecContext ctx;
  ctx.threads = 2;
  for (int round = 0; round < 2; ++round) {
    EXPECT_LE(worst_relative_error(a.conv.forward(a.x, ctx), a.ref), 1e-4);
    for (const ConvCase& c : others) {
      ConvProblem q(c);  // same seed: same weights as a.conv
      const double err = worst_relative_error(a.conv.forward_add(q.x, q.res, ctx), q.ref);
      std::printf("[ conv reuse %s round %d ] worst relative error %.3g\n", case_name(c).c_str(), round, err);
      EXPECT_LE(err, 1e-4);
    }
  }
}

TEST(Conv2d, OneAndTwoThreadsAgree) {
  ConvProblem p(ConvCase{2, 96, 96, 13, 5, 3, 1, 1, true, true, NHWC, NHWC});
  ExecContext one, two;
  one.threads = 1;
  two.threads = 2;
  const Tensor y1 = p.conv.forward_add(p.x, p.res, one);
  const Tensor y2 = p.conv.forward_add(p.x, p.res, two);
  const Tensor y1again = p.conv.forward_add(p.x, p.res, one);
  EXPECT_LE(worst_relative_error(y1, p.ref), 1e-4);
  EXPECT_LE(worst_relative_error(y2, p.ref), 1e-4);
  const std::vector<float> a = y1.to_vector(), b = y2.to_vector(), c = y1again.to_vector();
  double diff = 0.0, scale = 1.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(a[i])));
    ASSERT_EQ(a[i], c[i]) << "same thread count must be deterministic, element " << i;
  }
  EXPECT_LE(diff / scale, 1e-5);
}

TEST(Conv2d, ConcurrentCallsOnOneOp) {
  // Plans are shared between threads; each call brings its own stream, scratch and output.
  ConvProblem a(ConvCase{1, 32, 96, 13, 5, 3, 1, 1, true, true, NHWC, NHWC});
  ConvProblem b(ConvCase{2, 32, 96, 7, 9, 3, 1, 1, true, false, NCHW, NCHW});  // same weights and spec as a
  double worst[2] = {0.0, 0.0};
  auto work = [&](int id) {
    ExecContext ctx;
    ctx.threads = 1;
    for (int i = 0; i < 4; ++i) {
      const ConvProblem& p = (i + id) % 2 ? a : b;
      worst[id] = std::max(worst[id], worst_relative_error(a.conv.forward_add(p.x, p.res, ctx), p.ref));
    }
  };
  std::thread t0(work, 0), t1(work, 1);
  t0.join();
  t1.join();
  EXPECT_LE(worst[0], 1e-4);
  EXPECT_LE(worst[1], 1e-4);
}

TEST(Conv2d, BatchSliceViewAsInput) {
  // A view into the middle of a batch (non-zero byte offset) must read the right samples.
  ConvProblem whole(ConvCase{3, 32, 32, 7, 9, 3, 1, 1, true, false, NHWC, NHWC});
  const Tensor x = whole.x.slice_batch(1, 3);
  const std::vector<float> xv = x.to_vector();
  const auto ref = reference_conv(xv, whole.wv, whole.bv, {}, 2, 32, 7, 9, 32, 3, 1, 1);
  EXPECT_LE(worst_relative_error(whole.conv.forward(x, ExecContext{}), ref), 1e-4);
}

TEST(Conv2d, ForwardAddWritesIntoAResidualNothingElseHolds) {
  ConvProblem p(ConvCase{2, 32, 96, 7, 9, 3, 1, 1, true, true, NHWC, NHWC});
  ExecContext ctx;
  ctx.threads = 2;
  const std::vector<float> expect = p.conv.forward_add(p.x, p.res, ctx).to_vector();
  EXPECT_LE(worst_relative_error(p.conv.forward_add(p.x, p.res, ctx), p.ref), 1e-4);

  // Sole owner: the output is the residual's buffer, with the same values as forward().
  Tensor sole = p.res.clone();
  const void* buffer = sole.raw();
  const Tensor y = p.conv.forward_add(p.x, std::move(sole), ctx);
  EXPECT_EQ(y.raw(), buffer);
  EXPECT_EQ(y.to_vector(), expect);

  // Shared: another tensor still sees the residual unchanged; the output is new memory.
  const Tensor kept = p.res.clone();
  Tensor shared = kept;
  const Tensor y2 = p.conv.forward_add(p.x, std::move(shared), ctx);
  EXPECT_NE(y2.raw(), kept.raw());
  EXPECT_EQ(y2.to_vector(), expect);
  EXPECT_EQ(kept.to_vector(), p.rv);

  // A view of the caller's memory is never written, even when given up.
  std::vector<float> raw(static_cast<std::size_t>(p.res.numel()));
  std::copy(static_cast<const float*>(p.res.raw()), static_cast<const float*>(p.res.raw()) + raw.size(),
            raw.begin());
  const std::vector<float> raw_before = raw;
  const Tensor y3 =
      p.conv.forward_add(p.x, Tensor::view_of(raw.data(), p.res.shape(), DType::F32, Layout::NHWC), ctx);
  EXPECT_EQ(raw, raw_before);
  EXPECT_EQ(y3.to_vector(), expect);

  // A residual in the other layout: summed correctly, not in place.
  Tensor other = p.res.to_layout(Layout::Contiguous);
  const void* other_buffer = other.raw();
  const Tensor y4 = p.conv.forward_add(p.x, std::move(other), ctx);
  EXPECT_NE(y4.raw(), other_buffer);
  EXPECT_LE(worst_relative_error(y4, p.ref), 1e-4);

  // No residual: the plain convolution.
  ConvProblem q(ConvCase{1, 32, 32, 8, 8, 3, 1, 1, true, false, NHWC, NHWC});
  EXPECT_LE(worst_relative_error(q.conv.forward_add(q.x, Tensor(), ctx), q.ref), 1e-4);
  EXPECT_THROW(p.conv.forward_add(p.x, Tensor::zeros(Shape{1, 96, 7, 9}), ctx), ShapeError);
}

TEST(Conv2d, SmallMapsWithManyChannelsRunAsOneMatmulOverAnIm2colCopy) {
  // Which inputs take the im2col path: 3x3 stride-1 pad-1 fp32 NHWC, at most 16 pixels with 512
  // channels or more, at most 64 with 1,024 or more.
  const auto uses = [](std::int64_t I, std::int64_t H, std::int64_t W, std::int64_t k = 3, int stride = 1,
                       Layout l = Layout::NHWC, Precision p = Precision::FP32) {
    const Conv2d c(Tensor::zeros(Shape{8, I, k, k}), Tensor(), Conv2dSpec{stride, static_cast<int>(k / 2)});
    return cpu::conv2d_uses_im2col(c, Shape{1, I, H, W}, l, p);
  };
  EXPECT_TRUE(uses(512, 4, 4));
  EXPECT_TRUE(uses(1024, 8, 8));
  EXPECT_TRUE(uses(2048, 8, 8));
  EXPECT_TRUE(uses(512, 3, 5));
  EXPECT_FALSE(uses(512, 8, 8));
  EXPECT_FALSE(uses(256, 4, 4));
  EXPECT_FALSE(uses(1024, 16, 16));
  EXPECT_FALSE(uses(1024, 8, 8, 1));
  EXPECT_FALSE(uses(1024, 8, 8, 3, 2));
  EXPECT_FALSE(uses(1024, 8, 8, 3, 1, Layout::Contiguous));
  EXPECT_FALSE(uses(1024, 8, 8, 3, 1, Layout::NHWC, Precision::BF16));

  // And that path against the double loop: bias or not, residual in either layout or none,
  // batch > 1, non-square, in place, with and without prepare (which packs the convolution's
  // layout, then the source of the matmul's).
  ExecContext ctx;
  ctx.threads = 2;
  bool prepare = true;
  for (const ConvCase& c : {ConvCase{2, 512, 48, 4, 4, 3, 1, 1, true, true, NHWC, NHWC},
                            ConvCase{1, 1024, 24, 8, 8, 3, 1, 1, false, true, NHWC, NCHW},
                            ConvCase{3, 512, 16, 3, 5, 3, 1, 1, true, false, NHWC, NHWC}}) {
    ConvProblem p(c);
    ASSERT_TRUE(cpu::conv2d_uses_im2col(p.conv, p.x.shape(), p.x.layout(), Precision::FP32)) << case_name(c);
    if (prepare) p.conv.prepare(ctx);
    prepare = !prepare;
    const Tensor y = p.conv.forward_add(p.x, p.res, ctx);
    EXPECT_EQ(y.shape(), p.conv.output_shape(p.x.shape()));
    EXPECT_EQ(y.layout(), Layout::NHWC);
    const double err = worst_relative_error(y, p.ref);
    std::printf("[ conv im2col %s ] worst relative error %.3g\n", case_name(c).c_str(), err);
    EXPECT_LE(err, 1e-4) << case_name(c);
    EXPECT_EQ(p.conv.forward_add(p.x, p.res, ctx).to_vector(), y.to_vector());  // the cached plan
    if (c.residual && c.residual_layout == NHWC) {
      Tensor sole = p.res.clone();
      const void* buffer = sole.raw();
      const Tensor z = p.conv.forward_add(p.x, std::move(sole), ctx);
      EXPECT_EQ(z.raw(), buffer);
      EXPECT_EQ(z.to_vector(), y.to_vector());
    }
  }

  // One op at several im2col shapes and at a direct-convolution shape: each packing made from
  // whatever is packed already, every result right.
  ConvProblem p(ConvCase{1, 512, 32, 4, 4, 3, 1, 1, true, false, NHWC, NHWC});
  p.conv.prepare(ctx);
  EXPECT_LE(worst_relative_error(p.conv.forward(p.x, ctx), p.ref), 1e-4);
  for (const auto& [n, h, w] : {std::tuple{5, 4, 4}, std::tuple{2, 2, 3}, std::tuple{1, 9, 7}}) {
    const std::vector<float> xv = random_values(n * 512 * h * w, 40 + n);
    const Tensor x = Tensor::from_vector(Shape{n, 512, h, w}, xv, NHWC);
    const std::vector<double> ref = reference_conv(xv, p.wv, p.bv, {}, n, 512, h, w, 32, 3, 1, 1);
    EXPECT_LE(worst_relative_error(p.conv.forward(x, ctx), ref), 1e-4) << n << "x" << h << "x" << w;
  }
}

TEST(Conv2d, PrepareForAShapeThenForward) {
  // Prepared for the shape it runs at: the im2col path's layout (4x4, 512 channels) or the
  // convolution's; then the same results as unprepared, at that shape and at others.
  ExecContext ctx;
  ctx.threads = 2;
  for (const ConvCase& c : {ConvCase{2, 512, 24, 4, 4, 3, 1, 1, true, true, NHWC, NHWC},
                            ConvCase{1, 64, 40, 9, 11, 3, 1, 1, true, false, NHWC, NHWC}}) {
    ConvProblem p(c);
    p.conv.prepare(ctx, p.x.shape());
    p.conv.prepare(ctx, p.x.shape());  // idempotent
    EXPECT_LE(worst_relative_error(p.conv.forward_add(p.x, p.res, ctx), p.ref), 1e-4) << case_name(c);
    const std::vector<float> xv = random_values(c.I * 6 * 6, 77);
    const Tensor x = Tensor::from_vector(Shape{1, c.I, 6, 6}, xv, NHWC);
    EXPECT_LE(worst_relative_error(p.conv.forward(x, ctx),
                                   reference_conv(xv, p.wv, p.bv, {}, 1, c.I, 6, 6, c.O, 3, 1, 1)),
              1e-4);
    EXPECT_THROW(p.conv.prepare(ctx, Shape{1, c.I + 1, 4, 4}), ShapeError);
    EXPECT_THROW(p.conv.prepare(ctx, Shape{c.I, 4, 4}), ShapeError);
  }
  EXPECT_THROW(Conv2d().prepare(ctx, Shape{1, 8, 4, 4}), ArgumentError);
}

TEST(Conv2d, PrepareThenForward) {
  ConvProblem p(ConvCase{1, 96, 32, 13, 5, 3, 1, 1, true, true, NHWC, NHWC});
  ExecContext ctx;
  ctx.threads = 2;
  p.conv.prepare(ctx);
  p.conv.prepare(ctx);  // idempotent
  EXPECT_LE(worst_relative_error(p.conv.forward_add(p.x, p.res, ctx), p.ref), 1e-4);
  ExecContext fp16 = ctx;
  fp16.precision = Precision::FP16;
  EXPECT_THROW(p.conv.prepare(fp16), UnsupportedError);
  EXPECT_THROW(p.conv.forward(p.x, fp16), UnsupportedError);
}

TEST(Conv2d, OutputsAndScratchComeFromTheContextAllocator) {
  ConvProblem p(ConvCase{2, 32, 96, 13, 5, 3, 2, 1, true, true, NHWC, NHWC});
  CachingAllocator alloc;
  ExecContext ctx;
  ctx.allocator = &alloc;
  ctx.threads = 2;
  {
    const Tensor y = p.conv.forward_add(p.x, p.res, ctx);
    EXPECT_GE(alloc.bytes_in_use(), y.nbytes());
    EXPECT_LE(worst_relative_error(y, p.ref), 1e-4);
  }
  EXPECT_EQ(alloc.bytes_in_use(), 0u);
  const std::size_t sys = alloc.system_allocations();
  {
    const Tensor y = p.conv.forward_add(p.x, p.res, ctx);  // warm: every block comes from the cache
    EXPECT_LE(worst_relative_error(y, p.ref), 1e-4);
  }
  EXPECT_EQ(alloc.system_allocations(), sys);
}

TEST(Conv2d, PackedWeightsKeepOneCopyPerUsedLayout) {
  // The store behind Conv2d/Linear: a layout packed ahead (prepare) that the first primitive
  // does not take is dropped; layouts taken by primitives stay, each packed once.
  using dnnl::memory;
  std::vector<float> w = random_values(8 * 4 * 9, 9);
  const memory::dims dims{8, 4, 3, 3};
  const memory user({dims, memory::data_type::f32, memory::format_tag::oihw}, cpu::onednn::engine(),
                    w.data());
  const memory::desc guess(dims, memory::data_type::f32, memory::format_tag::ohwi);
  const memory::desc taken(dims, memory::data_type::f32, memory::format_tag::hwio);
  cpu::onednn::PackedWeights store;
  store.prepack(guess, user);
  EXPECT_EQ(store.count(), 1u);
  const memory a = store.get(taken, user);
  ASSERT_EQ(store.count(), 1u);
  EXPECT_TRUE(store.layouts()[0] == taken);
  const memory b = store.get(taken, user);
  EXPECT_EQ(a.get_data_handle(), b.get_data_handle());
  store.get(guess, user);
  EXPECT_EQ(store.count(), 2u);
  // hwio really holds the weights: element (o, i, h, w) at ((h * 3 + w) * 4 + i) * 8 + o.
  const float* hwio = static_cast<const float*>(a.get_data_handle());
  for (int o = 0; o < 8; ++o)
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 3; ++h)
        for (int x = 0; x < 3; ++x)
          ASSERT_EQ(hwio[((h * 3 + x) * 4 + i) * 8 + o],
                    w[static_cast<std::size_t>(((o * 4 + i) * 3 + h) * 3 + x)]);
}

TEST(Conv2d, Errors) {
  const Tensor w = Tensor::from_vector(Shape{8, 4, 3, 3}, random_values(8 * 4 * 9, 5));
  const Tensor b = Tensor::from_vector(Shape{8}, random_values(8, 6));
  const Conv2d conv(w, b, Conv2dSpec{1, 1});
  const Tensor x = Tensor::from_vector(Shape{1, 4, 6, 6}, random_values(144, 7), NHWC);
  const ExecContext ctx;
  EXPECT_NO_THROW(conv.forward(x, ctx));

  // wrong channel count
  EXPECT_THROW(conv.forward(Tensor::zeros(Shape{1, 5, 6, 6}, DType::F32, NHWC), ctx), ShapeError);
  // an input that is not an activation dtype (f32, bf16); a bf16 input is read (widened) in fp32
  EXPECT_THROW(conv.forward(x.to_dtype(DType::F16), ctx), DTypeError);
  EXPECT_THROW(conv.forward(Tensor::zeros(Shape{1, 4, 6, 6}, DType::I32, NHWC), ctx), DTypeError);
  EXPECT_NO_THROW(conv.forward(x.to_dtype(DType::BF16), ctx));
  // residual of the wrong shape or dtype
  EXPECT_THROW(conv.forward_add(x, Tensor::zeros(Shape{1, 8, 6, 5}), ctx), ShapeError);
  EXPECT_THROW(conv.forward_add(x, Tensor::zeros(Shape{1, 4, 6, 6}), ctx), ShapeError);
  EXPECT_THROW(conv.forward_add(x, Tensor::zeros(Shape{1, 8, 6, 6}, DType::F16), ctx), DTypeError);
  // activations other than f32 / bf16; bf16 activations from an fp32 convolution (oneDNN has none)
  ExecContext f16_out;
  f16_out.activations = DType::F16;
  EXPECT_THROW(conv.forward(x, f16_out), DTypeError);
  ExecContext bf16_out;
  bf16_out.activations = DType::BF16;
  EXPECT_THROW(conv.forward(x, bf16_out), UnsupportedError);
  // even or non-square kernel
  EXPECT_THROW(Conv2d(Tensor::zeros(Shape{8, 4, 2, 2}), Tensor()), ShapeError);
  EXPECT_THROW(Conv2d(Tensor::zeros(Shape{8, 4, 3, 1}), Tensor()), ShapeError);
  // rank-3 input, rank-3 weight, wrong bias
  EXPECT_THROW(conv.forward(Tensor::zeros(Shape{4, 6, 6}), ctx), ShapeError);
  EXPECT_THROW(Conv2d(Tensor::zeros(Shape{8, 4, 3}), Tensor()), ShapeError);
  EXPECT_THROW(Conv2d(w, Tensor::zeros(Shape{7})), ShapeError);
  // input smaller than the kernel without padding
  EXPECT_THROW(Conv2d(w, b, Conv2dSpec{1, 0}).forward(Tensor::zeros(Shape{1, 4, 2, 6}), ctx), ShapeError);
  // a context that asks for CUDA while the data is on the CPU
  ExecContext cuda;
  cuda.device = Device::cuda(0);
  EXPECT_THROW(conv.forward(x, cuda), DeviceError);
  // fp16 has no CPU path
  ExecContext fp16;
  fp16.precision = Precision::FP16;
  EXPECT_THROW(conv.forward(x, fp16), UnsupportedError);
  // a failed call leaves the op usable
  EXPECT_NO_THROW(conv.forward(x, ctx));
}

}  // namespace
