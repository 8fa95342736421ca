// SiLU, add, 2x2 average pool, nearest x2 upsampling, channel concat, adaptive pooling and the
// timestep embedding against double-precision references, in both layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "cpu/simd.hpp"
#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;

namespace {

using i64 = std::int64_t;

std::vector<float> randn(i64 n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

class KernelPath {
 public:
  explicit KernelPath(bool avx512) : previous_(cpu::simd::set_avx512_allowed(avx512)) {}
  ~KernelPath() { cpu::simd::set_avx512_allowed(previous_); }

 private:
  bool previous_;
};

ExecContext threads(int n) {
  ExecContext ctx;
  ctx.threads = n;
  return ctx;
}

const Layout kLayouts[] = {Layout::NHWC, Layout::Contiguous};
const Shape kImageShapes[] = {Shape{1, 32, 7, 5}, Shape{3, 96, 9, 13}, Shape{1, 192, 5, 7},
                              Shape{2, 320, 5, 7}, Shape{1, 1024, 5, 7}};

// Logical NCHW index.
i64 at(const Shape& s, i64 n, i64 c, i64 h, i64 w) { return ((n * s[1] + c) * s[2] + h) * s[3] + w; }

}  // namespace

// ---- SiLU ----------------------------------------------------------------------------------------

TEST(Silu, MatchesDoubleReference) {
  std::mt19937 rng(1);
  for (bool avx512 : {true, false}) {
    const KernelPath path(avx512);
    double worst = 0.0;
    for (const Shape& s : {Shape{1000}, Shape{3, 96, 9, 13}, Shape{1, 1024, 5, 7}, Shape{4, 33}})
      for (Layout layout : kLayouts) {
        if (layout == Layout::NHWC && s.rank() != 4) continue;
        std::vector<float> x = randn(s.numel(), rng, 4.0f);
        x[0] = 90.0f;   // exp(-x) underflows
        x[1] = -80.0f;  // exp(-x) would overflow fp32: the result is still accurate
        x[2] = 0.0f;
        x[3] = -200.0f;  // the result is below the smallest float
        const auto y = ops::silu(Tensor::from_vector(s, x, layout), threads(2)).to_vector();
        std::vector<double> ref(x.size());
        for (std::size_t i = 0; i < x.size(); ++i)
          ref[i] = x[i] / (1.0 + std::exp(-static_cast<double>(x[i])));
        const double err = worst_relative_error(y, ref);
        worst = std::max(worst, err);
        EXPECT_LE(err, 1e-5) << s.str();
        // Far from zero the relative accuracy matters too (small outputs for negative inputs).
        for (std::size_t i = 0; i < x.size(); ++i)
          ASSERT_NEAR(y[i], ref[i], 2e-6 * std::max(1e-30, std::abs(ref[i])) + 1e-38) << "x = " << x[i];
      }
    std::printf("silu (%s): worst relative error %.3g\n", avx512 ? "AVX-512" : "portable", worst);
  }
}

TEST(Silu, PropagatesNanAndHandlesInfinities) {
  for (bool avx512 : {true, false}) {
    const KernelPath path(avx512);
    const float inf = std::numeric_limits<float>::infinity();
    const std::vector<float> x = {std::nanf(""), inf, -inf, 1.0f};
    const auto y = ops::silu(Tensor::from_vector(Shape{4}, x)).to_vector();
    EXPECT_TRUE(std::isnan(y[0]));
    EXPECT_EQ(y[1], inf);
    EXPECT_EQ(y[2], 0.0f);
    EXPECT_NEAR(y[3], 0.7310585786, 1e-7);
  }
}

TEST(Silu, RejectsNonF32) { EXPECT_THROW(ops::silu(Tensor::zeros(Shape{4}, DType::F16)), DTypeError); }

// ---- add -----------------------------------------------------------------------------------------

TEST(Add, MatchesDoubleReference) {
  std::mt19937 rng(2);
  for (const Shape& s : kImageShapes)
    for (Layout layout : kLayouts) {
      const auto a = randn(s.numel(), rng), b = randn(s.numel(), rng);
      const Tensor y =
          ops::add(Tensor::from_vector(s, a, layout), Tensor::from_vector(s, b, layout), threads(2));
      EXPECT_EQ(y.layout(), layout);
      std::vector<double> ref(a.size());
      for (std::size_t i = 0; i < a.size(); ++i) ref[i] = static_cast<double>(a[i]) + b[i];
      EXPECT_LE(worst_relative_error(y.to_vector(), ref), 1e-6) << s.str();
    }
}

TEST(Add, RejectsBadArguments) {
  const Tensor a = Tensor::zeros(Shape{1, 4, 3, 3}, DType::F32, Layout::NHWC);
  EXPECT_THROW(ops::add(a, Tensor::zeros(Shape{1, 4, 3, 2}, DType::F32, Layout::NHWC)), ShapeError);
  EXPECT_THROW(ops::add(a, Tensor::zeros(Shape{1, 4, 3, 3})), ShapeError);  // layouts differ
  EXPECT_THROW(ops::add(a, Tensor::zeros(Shape{1, 4, 3, 3}, DType::F16, Layout::NHWC)), DTypeError);
}

// ---- avg_pool2x2 ---------------------------------------------------------------------------------

TEST(AvgPool2x2, MatchesDoubleReference) {
  std::mt19937 rng(3);
  for (const Shape& s : {Shape{1, 32, 8, 6}, Shape{3, 96, 10, 14}, Shape{1, 576, 6, 8}, Shape{2, 1024, 2, 4}})
    for (Layout layout : kLayouts) {
      const auto x = randn(s.numel(), rng);
      const Tensor y = ops::avg_pool2x2(Tensor::from_vector(s, x, layout), threads(2));
      const Shape o{s[0], s[1], s[2] / 2, s[3] / 2};
      ASSERT_EQ(y.shape(), o);
      EXPECT_EQ(y.layout(), layout);
      std::vector<double> ref(static_cast<std::size_t>(o.numel()));
      for (i64 n = 0; n < o[0]; ++n)
        for (i64 c = 0; c < o[1]; ++c)
          for (i64 h = 0; h < o[2]; ++h)
            for (i64 w = 0; w < o[3]; ++w) {
              double sum = 0.0;
              for (i64 dh = 0; dh < 2; ++dh)
                for (i64 dw = 0; dw < 2; ++dw) sum += x[at(s, n, c, 2 * h + dh, 2 * w + dw)];
              ref[at(o, n, c, h, w)] = sum / 4.0;
            }
      EXPECT_LE(worst_relative_error(y.to_vector(), ref), 1e-6) << s.str() << " " << layout_name(layout);
    }
}

TEST(AvgPool2x2, RejectsBadArguments) {
  EXPECT_THROW(ops::avg_pool2x2(Tensor::zeros(Shape{1, 4, 7, 6})), ShapeError);  // odd H
  EXPECT_THROW(ops::avg_pool2x2(Tensor::zeros(Shape{1, 4, 6, 5}, DType::F32, Layout::NHWC)), ShapeError);
  EXPECT_THROW(ops::avg_pool2x2(Tensor::zeros(Shape{4, 6, 6})), ShapeError);                 // rank
  EXPECT_THROW(ops::avg_pool2x2(Tensor::zeros(Shape{1, 4, 6, 6}, DType::F16)), DTypeError);  // not f32/bf16
  ExecContext i32_out;
  i32_out.activations = DType::I32;
  EXPECT_THROW(ops::avg_pool2x2(Tensor::zeros(Shape{1, 4, 6, 6}), i32_out), DTypeError);
}

// ---- upsample_nearest2x --------------------------------------------------------------------------

TEST(UpsampleNearest2x, CopiesEachPixelToA2x2Block) {
  std::mt19937 rng(4);
  for (const Shape& s : kImageShapes)
    for (Layout layout : kLayouts) {
      const auto x = randn(s.numel(), rng);
      const Tensor y = ops::upsample_nearest2x(Tensor::from_vector(s, x, layout), threads(2));
      const Shape o{s[0], s[1], 2 * s[2], 2 * s[3]};
      ASSERT_EQ(y.shape(), o);
      EXPECT_EQ(y.layout(), layout);
      const auto v = y.to_vector();
      for (i64 n = 0; n < o[0]; ++n)
        for (i64 c = 0; c < o[1]; ++c)
          for (i64 h = 0; h < o[2]; ++h)
            for (i64 w = 0; w < o[3]; ++w)
              ASSERT_EQ(v[at(o, n, c, h, w)], x[at(s, n, c, h / 2, w / 2)])
                  << s.str() << " " << layout_name(layout);
    }
}

TEST(UpsampleNearest2x, RejectsBadArguments) {
  EXPECT_THROW(ops::upsample_nearest2x(Tensor::zeros(Shape{4, 6, 6})), ShapeError);
  EXPECT_THROW(ops::upsample_nearest2x(Tensor::zeros(Shape{1, 4, 6, 6}, DType::F16)), DTypeError);
}

// ---- concat_channels -----------------------------------------------------------------------------

TEST(ConcatChannels, PutsAFirst) {
  std::mt19937 rng(5);
  const std::pair<Shape, i64> cases[] = {{Shape{3, 32, 7, 5}, 96},
                                         {Shape{1, 320, 9, 13}, 192},
                                         {Shape{2, 1024, 5, 7}, 576},
                                         {Shape{1, 5, 3, 3}, 3}};
  for (const auto& [sa, cb] : cases)
    for (Layout layout : kLayouts) {
      const Shape sb{sa[0], cb, sa[2], sa[3]};
      const auto a = randn(sa.numel(), rng), b = randn(sb.numel(), rng);
      const Tensor y = ops::concat_channels(Tensor::from_vector(sa, a, layout),
                                            Tensor::from_vector(sb, b, layout), threads(2));
      const Shape o{sa[0], sa[1] + cb, sa[2], sa[3]};
      ASSERT_EQ(y.shape(), o);
      EXPECT_EQ(y.layout(), layout);
      const auto v = y.to_vector();
      for (i64 n = 0; n < o[0]; ++n)
        for (i64 c = 0; c < o[1]; ++c)
          for (i64 h = 0; h < o[2]; ++h)
            for (i64 w = 0; w < o[3]; ++w) {
              const float want = c < sa[1] ? a[at(sa, n, c, h, w)] : b[at(sb, n, c - sa[1], h, w)];
              ASSERT_EQ(v[at(o, n, c, h, w)], want) << sa.str() << " " << layout_name(layout);
            }
    }
}

TEST(ConcatChannels, RejectsBadArguments) {
  const Tensor a = Tensor::zeros(Shape{2, 4, 5, 5}, DType::F32, Layout::NHWC);
  const auto z = [](const Shape& s, Layout l = Layout::NHWC, DType t = DType::F32) {
    return Tensor::zeros(s, t, l);
  };
  EXPECT_THROW(ops::concat_channels(a, z(Shape{1, 4, 5, 5})), ShapeError);                      // N
  EXPECT_THROW(ops::concat_channels(a, z(Shape{2, 4, 4, 5})), ShapeError);                      // H
  EXPECT_THROW(ops::concat_channels(a, z(Shape{2, 4, 5, 5}, Layout::Contiguous)), ShapeError);  // layout
  EXPECT_THROW(ops::concat_channels(a, Tensor::zeros(Shape{2, 4, 25})), ShapeError);            // rank
  EXPECT_THROW(ops::concat_channels(a, z(Shape{2, 4, 5, 5}, Layout::NHWC, DType::F16)), DTypeError);
}

// ---- adaptive pooling ----------------------------------------------------------------------------

namespace {

std::vector<double> adaptive_reference(const std::vector<float>& x, const Shape& s, i64 oh, i64 ow,
                                       bool max) {
  const Shape o{s[0], s[1], oh, ow};
  std::vector<double> ref(static_cast<std::size_t>(o.numel()));
  for (i64 n = 0; n < s[0]; ++n)
    for (i64 c = 0; c < s[1]; ++c)
      for (i64 i = 0; i < oh; ++i)
        for (i64 j = 0; j < ow; ++j) {
          // PyTorch: start = floor(i * H / oh), end = ceil((i + 1) * H / oh).
          const auto h0 =
              static_cast<i64>(std::floor(static_cast<double>(i * s[2]) / static_cast<double>(oh)));
          const auto h1 =
              static_cast<i64>(std::ceil(static_cast<double>((i + 1) * s[2]) / static_cast<double>(oh)));
          const auto w0 =
              static_cast<i64>(std::floor(static_cast<double>(j * s[3]) / static_cast<double>(ow)));
          const auto w1 =
              static_cast<i64>(std::ceil(static_cast<double>((j + 1) * s[3]) / static_cast<double>(ow)));
          double sum = 0.0, mx = -1e300;
          for (i64 h = h0; h < h1; ++h)
            for (i64 w = w0; w < w1; ++w) {
              sum += x[at(s, n, c, h, w)];
              mx = std::max(mx, static_cast<double>(x[at(s, n, c, h, w)]));
            }
          ref[at(o, n, c, i, j)] = max ? mx : sum / static_cast<double>((h1 - h0) * (w1 - w0));
        }
  return ref;
}

}  // namespace

TEST(AdaptivePool, MatchesDoubleReference) {
  std::mt19937 rng(6);
  struct Case {
    Shape s;
    int oh, ow;
  };
  const Case cases[] = {{Shape{1, 32, 9, 13}, 4, 5},  {Shape{3, 96, 7, 5}, 3, 2},
                        {Shape{1, 192, 7, 5}, 7, 5},  {Shape{2, 320, 5, 7}, 1, 1},
                        {Shape{1, 1024, 5, 7}, 2, 3}, {Shape{1, 3, 16, 16}, 3, 3}};
  for (const Case& k : cases)
    for (bool max : {false, true})
      for (Layout layout : kLayouts) {
        const auto x = randn(k.s.numel(), rng);
        const Tensor in = Tensor::from_vector(k.s, x, layout);
        const Tensor y = max ? ops::adaptive_max_pool2d(in, k.oh, k.ow, threads(2))
                             : ops::adaptive_avg_pool2d(in, k.oh, k.ow, threads(2));
        ASSERT_EQ(y.shape(), (Shape{k.s[0], k.s[1], k.oh, k.ow}));
        EXPECT_EQ(y.layout(), layout);
        const double err = worst_relative_error(y.to_vector(), adaptive_reference(x, k.s, k.oh, k.ow, max));
        EXPECT_LE(err, 1e-6) << k.s.str() << " -> " << k.oh << "x" << k.ow << (max ? " max " : " avg ")
                             << layout_name(layout);
      }
}

TEST(AdaptivePool, UsesPyTorchsOverlappingWindows) {
  // H = 5 -> 3: windows [0, 2), [1, 4), [3, 5) (they overlap), as torch.nn.AdaptiveAvgPool2d gives.
  const std::vector<float> x = {1, 2, 4, 8, 16};
  for (Layout layout : kLayouts) {
    const auto avg =
        ops::adaptive_avg_pool2d(Tensor::from_vector(Shape{1, 1, 5, 1}, x, layout), 3, 1).to_vector();
    EXPECT_FLOAT_EQ(avg[0], 1.5f);
    EXPECT_FLOAT_EQ(avg[1], 14.0f / 3.0f);
    EXPECT_FLOAT_EQ(avg[2], 12.0f);
    const auto mx =
        ops::adaptive_max_pool2d(Tensor::from_vector(Shape{1, 1, 1, 5}, x, layout), 1, 3).to_vector();
    EXPECT_EQ(mx, (std::vector<float>{2, 8, 16}));
  }
}

TEST(AdaptivePool, MaxPropagatesNan) {
  std::vector<float> x = {1, 2, 3, 4};
  x[1] = std::nanf("");
  for (Layout layout : kLayouts) {
    const auto y =
        ops::adaptive_max_pool2d(Tensor::from_vector(Shape{1, 1, 2, 2}, x, layout), 1, 1).to_vector();
    EXPECT_TRUE(std::isnan(y[0])) << layout_name(layout);
  }
}

TEST(AdaptivePool, RejectsBadArguments) {
  const Tensor x = Tensor::zeros(Shape{1, 4, 5, 7}, DType::F32, Layout::NHWC);
  EXPECT_THROW(ops::adaptive_avg_pool2d(x, 6, 7), ArgumentError);  // larger than the input
  EXPECT_THROW(ops::adaptive_max_pool2d(x, 5, 8), ArgumentError);
  EXPECT_THROW(ops::adaptive_avg_pool2d(x, 0, 1), ArgumentError);
  EXPECT_THROW(ops::adaptive_avg_pool2d(Tensor::zeros(Shape{4, 5, 7}), 1, 1), ShapeError);
  EXPECT_THROW(ops::adaptive_max_pool2d(Tensor::zeros(Shape{1, 4, 5, 7}, DType::F16), 1, 1), DTypeError);
}

// ---- timestep_embedding --------------------------------------------------------------------------

TEST(TimestepEmbedding, MatchesFp32ArgumentsInDouble) {
  // The reference rounds freq_i and t * freq_i to fp32 as ADM's PyTorch code does, then takes
  // cos / sin in double.
  const std::vector<float> t = {0.0f, 1.0f, 17.0f, 250.5f, 999.0f, 3999.0f};
  for (int dim : {1, 2, 7, 128, 192, 257}) {
    const auto y = ops::timestep_embedding(Tensor::from_vector(Shape{6}, t), dim, threads(2));
    ASSERT_EQ(y.shape(), (Shape{6, dim}));
    const int half = dim / 2;
    std::vector<double> ref(static_cast<std::size_t>(6 * dim), 0.0);
    for (int n = 0; n < 6; ++n)
      for (int i = 0; i < half; ++i) {
        const float f = static_cast<float>(std::exp(static_cast<double>(
            static_cast<float>(-std::log(10000.0)) * static_cast<float>(i) / static_cast<float>(half))));
        const double arg = static_cast<double>(t[n] * f);
        ref[n * dim + i] = std::cos(arg);
        ref[n * dim + half + i] = std::sin(arg);
      }
    const auto v = y.to_vector();
    EXPECT_LE(worst_relative_error(v, ref), 1e-6) << "dim " << dim;
    if (dim % 2) {
      for (int n = 0; n < 6; ++n) EXPECT_EQ(v[n * dim + dim - 1], 0.0f);
    }
  }
}

TEST(TimestepEmbedding, MatchesPyTorch) {
  // Produced by ADM's timestep_embedding (PyTorch 1.13, CPU) for t = [0, 1, 250.5, 999], dim = 7.
  const std::vector<float> want = {1.000000000e+00f,  1.000000000e+00f,  1.000000000e+00f,  0.000000000e+00f,
                                   0.000000000e+00f,  0.000000000e+00f,  0.000000000e+00f,  5.403023362e-01f,
                                   9.989229441e-01f,  9.999976754e-01f,  8.414709568e-01f,  4.639922455e-02f,
                                   2.154433168e-03f,  0.000000000e+00f,  6.767830253e-01f,  5.904415250e-01f,
                                   8.578701019e-01f,  -7.361825109e-01f, -8.070803881e-01f, 5.138665438e-01f,
                                   0.000000000e+00f,  9.996498227e-01f,  -7.286707163e-01f, -5.492646694e-01f,
                                   -2.646075189e-02f, 6.848641634e-01f,  8.356484771e-01f,  0.000000000e+00f};
  const auto y = ops::timestep_embedding(
                     Tensor::from_vector(Shape{4}, std::vector<float>{0.0f, 1.0f, 250.5f, 999.0f}), 7)
                     .to_vector();
  ASSERT_EQ(y.size(), want.size());
  // PyTorch's vectorised expf is within an ulp but not always correctly rounded (freq_1 here is one ulp
  // below): at t = 999 one ulp of a frequency moves cos / sin by ~3e-6.
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(y[i], want[i], 1e-5) << "element " << i;
}

TEST(TimestepEmbedding, RejectsBadArguments) {
  const Tensor t = Tensor::zeros(Shape{3});
  EXPECT_THROW(ops::timestep_embedding(t, 0), ArgumentError);
  EXPECT_THROW(ops::timestep_embedding(Tensor::zeros(Shape{3, 1}), 8), ShapeError);
  EXPECT_THROW(ops::timestep_embedding(Tensor::zeros(Shape{3}, DType::I32), 8), DTypeError);
}

// ---- threads -------------------------------------------------------------------------------------

TEST(SmallOps, ResultsDoNotDependOnThreadCount) {
  std::mt19937 rng(9);
  const Shape s{2, 96, 9, 13};
  for (Layout layout : kLayouts) {
    const Tensor x = Tensor::from_vector(s, randn(s.numel(), rng), layout);
    for (const auto& op : std::vector<std::function<Tensor(const ExecContext&)>>{
             [&](const ExecContext& c) { return ops::silu(x, c); },
             [&](const ExecContext& c) { return ops::upsample_nearest2x(x, c); },
             [&](const ExecContext& c) { return ops::concat_channels(x, x, c); },
             [&](const ExecContext& c) { return ops::adaptive_avg_pool2d(x, 4, 5, c); },
             [&](const ExecContext& c) { return ops::adaptive_max_pool2d(x, 4, 5, c); }})
      EXPECT_EQ(op(threads(1)).to_vector(), op(threads(2)).to_vector());
  }
}
