// The CUDA backend's hand-written kernels against the CPU backend (and, on small cases, against a
// double-precision reference written here): fused GroupNorm, flash attention and the small ops, on
// awkward shapes (C = 96, 192, 576; T = 64, 256, 1024 and odd token counts; batch 1 and 33), both
// layouts and both qkv channel orders. fp32 results must agree to 1e-4 of max(1, max|reference|);
// GroupNorm and attention must be bitwise reproducible run to run. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;

namespace {

constexpr double kTol = 1e-4;

#define REQUIRE_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

std::vector<float> randn(std::size_t n, std::mt19937& rng, float mean = 0.0f, float stddev = 1.0f) {
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

ExecContext gpu_ctx() {
  ExecContext c;
  c.device = Device::cuda();
  return c;
}

Tensor gpu(const Tensor& t) { return t.defined() ? t.to_device(Device::cuda()) : t; }
std::vector<float> host(const Tensor& t) { return t.to_device(Device::cpu()).to_vector(); }

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- GroupNorm --------------------------------------------------------------------------------

// Double precision, two-pass variance, logical NCHW order.
std::vector<double> group_norm_reference(const std::vector<float>& x, const Shape& s,
                                         const std::vector<float>& gamma, const std::vector<float>& beta,
                                         int groups, double eps, const std::vector<float>* pre_bias,
                                         const std::vector<float>* scale_shift, bool silu) {
  const std::int64_t N = s[0], C = s[1], HW = s[2] * s[3], cg = C / groups;
  std::vector<double> y(x.size());
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < groups; ++g) {
      auto val = [&](std::int64_t c, std::int64_t p) {
        return static_cast<double>(x[(n * C + c) * HW + p]) + (pre_bias ? (*pre_bias)[n * C + c] : 0.0);
      };
      double mean = 0.0, var = 0.0;
      for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (std::int64_t p = 0; p < HW; ++p) mean += val(c, p);
      mean /= static_cast<double>(cg * HW);
      for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (std::int64_t p = 0; p < HW; ++p) var += (val(c, p) - mean) * (val(c, p) - mean);
      var /= static_cast<double>(cg * HW);
      for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (std::int64_t p = 0; p < HW; ++p) {
          double v = (val(c, p) - mean) / std::sqrt(var + eps) * gamma[c] + beta[c];
          if (scale_shift) v = v * (1.0 + (*scale_shift)[n * 2 * C + c]) + (*scale_shift)[n * 2 * C + C + c];
          if (silu) v = v / (1.0 + std::exp(-v));
          y[(n * C + c) * HW + p] = v;
        }
    }
  return y;
}

struct GnCase {
  std::int64_t n, c, h, w;
};

TEST(CudaGroupNorm, MatchesCpuOnAwkwardShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(11);
  double worst = 0.0;
  for (const GnCase k :
       {GnCase{1, 96, 17, 13}, GnCase{33, 192, 8, 8}, GnCase{2, 576, 16, 16}, GnCase{1, 192, 64, 64}}) {
    for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
      for (int variant = 0; variant < 3; ++variant) {
        const Shape s{k.n, k.c, k.h, k.w};
        // ADM activations can sit far from zero: an offset mean tests the statistics' stability.
        const float offset = variant == 2 ? 120.0f : 0.0f;
        const Tensor x = Tensor::from_vector(s, randn(s.numel(), rng, offset, 2.0f), layout);
        const Tensor gamma = Tensor::from_vector(Shape{k.c}, randn(k.c, rng, 1.0f, 0.3f));
        const Tensor beta = Tensor::from_vector(Shape{k.c}, randn(k.c, rng, 0.0f, 0.3f));
        ops::GroupNormArgs args;
        args.silu = variant >= 1;
        if (variant >= 1) {
          args.pre_bias = Tensor::from_vector(Shape{k.n, k.c}, randn(k.n * k.c, rng, 0.0f, 3.0f));
          args.scale_shift = Tensor::from_vector(Shape{k.n, 2 * k.c}, randn(2 * k.n * k.c, rng, 0.0f, 0.5f));
        }
        const Tensor ref = ops::group_norm(x, gamma, beta, args);
        ops::GroupNormArgs gargs = args;
        gargs.pre_bias = gpu(args.pre_bias);
        gargs.scale_shift = gpu(args.scale_shift);
        const Tensor y = ops::group_norm(gpu(x), gpu(gamma), gpu(beta), gargs, gpu_ctx());
        EXPECT_EQ(y.layout(), layout);
        EXPECT_TRUE(y.device() == Device::cuda());
        const double e = worst_relative_error(host(y), ref.to_vector());
        worst = std::max(worst, e);
        EXPECT_LE(e, kTol) << s.str() << " " << layout_name(layout) << " variant " << variant;
      }
    }
  }
  std::printf("[ worst ] GroupNorm GPU vs CPU relative error %.3g\n", worst);
}

TEST(CudaGroupNorm, MatchesDoubleReference) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  const Shape s{3, 96, 5, 7};
  const std::vector<float> xv = randn(s.numel(), rng, 30.0f, 1.5f);
  const std::vector<float> gv = randn(96, rng, 1.0f, 0.2f), bv = randn(96, rng, 0.0f, 0.2f);
  const std::vector<float> pb = randn(3 * 96, rng), ss = randn(3 * 192, rng, 0.0f, 0.3f);
  ops::GroupNormArgs args;
  args.groups = 8;
  args.eps = 1e-6f;
  args.silu = true;
  args.pre_bias = gpu(Tensor::from_vector(Shape{3, 96}, pb));
  args.scale_shift = gpu(Tensor::from_vector(Shape{3, 192}, ss));
  const auto ref = group_norm_reference(xv, s, gv, bv, 8, 1e-6, &pb, &ss, true);
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Tensor y =
        ops::group_norm(gpu(Tensor::from_vector(s, xv, layout)), gpu(Tensor::from_vector(Shape{96}, gv)),
                        gpu(Tensor::from_vector(Shape{96}, bv)), args, gpu_ctx());
    EXPECT_LE(worst_relative_error(host(y), ref), kTol) << layout_name(layout);
  }
}

TEST(CudaGroupNorm, BitwiseReproducible) {
  REQUIRE_GPU();
  std::mt19937 rng(13);
  const Shape s{4, 576, 32, 32};
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Tensor x = gpu(Tensor::from_vector(s, randn(s.numel(), rng, 5.0f, 3.0f), layout));
    const Tensor gamma = gpu(Tensor::from_vector(Shape{576}, randn(576, rng, 1.0f, 0.3f)));
    const Tensor beta = gpu(Tensor::from_vector(Shape{576}, randn(576, rng)));
    ops::GroupNormArgs args;
    args.silu = true;
    args.scale_shift = gpu(Tensor::from_vector(Shape{4, 1152}, randn(4 * 1152, rng, 0.0f, 0.3f)));
    const std::vector<float> first = host(ops::group_norm(x, gamma, beta, args, gpu_ctx()));
    for (int run = 0; run < 3; ++run)
      EXPECT_TRUE(bitwise_equal(host(ops::group_norm(x, gamma, beta, args, gpu_ctx())), first))
          << layout_name(layout) << " run " << run;
  }
}

// ---- attention --------------------------------------------------------------------------------

// Double precision, logical NCHW qkv [N, 3C, T].
std::vector<double> attention_reference(const std::vector<float>& qkv, std::int64_t N, std::int64_t C,
                                        std::int64_t T, int heads, bool legacy) {
  const std::int64_t d = C / heads;
  std::vector<double> out(static_cast<std::size_t>(N * C * T));
  auto at = [&](std::int64_t n, std::int64_t h, int role, std::int64_t i, std::int64_t t) {
    const std::int64_t ch = legacy ? h * 3 * d + role * d + i : role * C + h * d + i;
    return static_cast<double>(qkv[(n * 3 * C + ch) * T + t]);
  };
  std::vector<double> w(static_cast<std::size_t>(T));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t t = 0; t < T; ++t) {
        double mx = -1e300;
        for (std::int64_t s = 0; s < T; ++s) {
          double dot = 0.0;
          for (std::int64_t i = 0; i < d; ++i) dot += at(n, h, 0, i, t) * at(n, h, 1, i, s);
          w[s] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, w[s]);
        }
        double sum = 0.0;
        for (std::int64_t s = 0; s < T; ++s) sum += (w[s] = std::exp(w[s] - mx));
        for (std::int64_t i = 0; i < d; ++i) {
          double o = 0.0;
          for (std::int64_t s = 0; s < T; ++s) o += w[s] * at(n, h, 2, i, s);
          out[(n * C + h * d + i) * T + t] = o / sum;
        }
      }
  return out;
}

struct AttnCase {
  std::int64_t n, c, h, w;
  int heads;
};

TEST(CudaAttention, MatchesCpuOnAwkwardShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(21);
  double worst = 0.0;
  const AttnCase cases[] = {
      {33, 96, 8, 8, 3},    // T = 64, d = 32, batch 33
      {1, 192, 16, 16, 3},  // T = 256, d = 64
      {1, 576, 32, 32, 9},  // T = 1024, d = 64
      {2, 192, 9, 13, 6},   // T = 117 (partial tiles), d = 32
      {2, 96, 16, 16, 6},   // d = 16 (padded)
      {1, 96, 8, 8, 1},     // d = 96 (padded to 128)
      {3, 384, 16, 16, 3},  // d = 128
      {2, 512, 8, 8, 2},    // d = 256
  };
  for (const AttnCase& k : cases) {
    for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
      for (ops::QkvOrder order : {ops::QkvOrder::Legacy, ops::QkvOrder::Split}) {
        const Shape s{k.n, 3 * k.c, k.h, k.w};
        const Tensor qkv = Tensor::from_vector(s, randn(s.numel(), rng), layout);
        const Tensor ref = ops::attention(qkv, k.heads, order);
        const Tensor y = ops::attention(gpu(qkv), k.heads, order, gpu_ctx());
        EXPECT_EQ(y.shape(), ref.shape());
        EXPECT_EQ(y.layout(), layout);
        const double e = worst_relative_error(host(y), ref.to_vector());
        worst = std::max(worst, e);
        EXPECT_LE(e, kTol) << s.str() << " heads " << k.heads << " " << layout_name(layout)
                           << (order == ops::QkvOrder::Legacy ? " legacy" : " split");
      }
    }
  }
  std::printf("[ worst ] attention GPU vs CPU relative error %.3g\n", worst);
}

TEST(CudaAttention, MatchesDoubleReferenceWithPeakedSoftmax) {
  REQUIRE_GPU();
  std::mt19937 rng(22);
  const std::int64_t N = 2, C = 64, H = 5, W = 7, T = H * W;
  // Large logits: the running maximum and the rescaling of the online softmax matter.
  const std::vector<float> v = randn(static_cast<std::size_t>(N * 3 * C * T), rng, 0.0f, 4.0f);
  for (bool legacy : {true, false}) {
    const auto ref = attention_reference(v, N, C, T, 2, legacy);
    for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
      const Tensor qkv = gpu(Tensor::from_vector(Shape{N, 3 * C, H, W}, v, layout));
      const Tensor y =
          ops::attention(qkv, 2, legacy ? ops::QkvOrder::Legacy : ops::QkvOrder::Split, gpu_ctx());
      EXPECT_LE(worst_relative_error(host(y), ref), kTol)
          << layout_name(layout) << (legacy ? " legacy" : " split");
    }
  }
}

TEST(CudaAttention, BitwiseReproducibleAndRejectsHugeHeads) {
  REQUIRE_GPU();
  std::mt19937 rng(23);
  const Shape s{2, 3 * 256, 16, 16};
  const Tensor qkv = gpu(Tensor::from_vector(s, randn(s.numel(), rng), Layout::NHWC));
  const std::vector<float> first = host(ops::attention(qkv, 4, ops::QkvOrder::Split, gpu_ctx()));
  EXPECT_TRUE(bitwise_equal(host(ops::attention(qkv, 4, ops::QkvOrder::Split, gpu_ctx())), first));
  // d = 512 is beyond the kernel's register tiles: a typed error, not a wrong answer.
  const Shape big{1, 3 * 512, 4, 4};
  const Tensor wide = gpu(Tensor::from_vector(big, randn(big.numel(), rng), Layout::NHWC));
  EXPECT_THROW((void)ops::attention(wide, 1, ops::QkvOrder::Split, gpu_ctx()), UnsupportedError);
}

// ---- small ops --------------------------------------------------------------------------------

TEST(CudaSmallOps, ElementwiseMatchCpu) {
  REQUIRE_GPU();
  std::mt19937 rng(31);
  const Shape flat{1000003};
  const Tensor a = Tensor::from_vector(flat, randn(flat.numel(), rng, 0.0f, 8.0f));
  const Tensor b = Tensor::from_vector(flat, randn(flat.numel(), rng));
  EXPECT_LE(worst_relative_error(host(ops::silu(gpu(a), gpu_ctx())), ops::silu(a).to_vector()), 1e-6);
  EXPECT_TRUE(bitwise_equal(host(ops::add(gpu(a), gpu(b), gpu_ctx())), ops::add(a, b).to_vector()));

  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Shape s{3, 96, 10, 14};
    const Tensor x = Tensor::from_vector(s, randn(s.numel(), rng), layout);
    const Tensor pooled = ops::avg_pool2x2(gpu(x), gpu_ctx());
    EXPECT_EQ(pooled.layout(), layout);
    EXPECT_TRUE(bitwise_equal(host(pooled), ops::avg_pool2x2(x).to_vector())) << layout_name(layout);
    const Tensor up = ops::upsample_nearest2x(gpu(x), gpu_ctx());
    EXPECT_EQ(up.shape(), (Shape{3, 96, 20, 28}));
    EXPECT_TRUE(bitwise_equal(host(up), ops::upsample_nearest2x(x).to_vector())) << layout_name(layout);

    const Shape sb{3, 192, 10, 14};
    const Tensor y = Tensor::from_vector(sb, randn(sb.numel(), rng), layout);
    const Tensor cat = ops::concat_channels(gpu(x), gpu(y), gpu_ctx());
    EXPECT_EQ(cat.shape(), (Shape{3, 288, 10, 14}));
    EXPECT_TRUE(bitwise_equal(host(cat), ops::concat_channels(x, y).to_vector())) << layout_name(layout);
  }
}

TEST(CudaSmallOps, AdaptivePoolingMatchesCpu) {
  REQUIRE_GPU();
  std::mt19937 rng(32);
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Shape s{33, 96, 13, 11};
    std::vector<float> v = randn(s.numel(), rng, 2.0f, 5.0f);
    v[17] = std::numeric_limits<float>::quiet_NaN();  // NaN wins a max, as in PyTorch
    const Tensor x = Tensor::from_vector(s, v, layout);
    for (auto [oh, ow] : {std::pair{4, 3}, std::pair{1, 1}, std::pair{13, 11}, std::pair{5, 7}}) {
      const Tensor avg = ops::adaptive_avg_pool2d(gpu(x), oh, ow, gpu_ctx());
      const Tensor mx = ops::adaptive_max_pool2d(gpu(x), oh, ow, gpu_ctx());
      EXPECT_EQ(avg.shape(), (Shape{33, 96, oh, ow}));
      EXPECT_LE(worst_relative_error(host(avg), ops::adaptive_avg_pool2d(x, oh, ow).to_vector()), 1e-6)
          << oh << "x" << ow;
      EXPECT_LE(worst_relative_error(host(mx), ops::adaptive_max_pool2d(x, oh, ow).to_vector()), 0.0)
          << oh << "x" << ow;
    }
  }
}

TEST(CudaSmallOps, TimestepEmbeddingMatchesCpuAndFormula) {
  REQUIRE_GPU();
  std::vector<float> t(33);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(i * 31 % 1000) + 0.25f;
  const Tensor tc = Tensor::from_vector(Shape{33}, t);
  for (int dim : {192, 65, 1, 2}) {
    const Tensor y = ops::timestep_embedding(gpu(tc), dim, gpu_ctx());
    ASSERT_EQ(y.shape(), (Shape{33, dim}));
    const std::vector<float> got = host(y);
    EXPECT_LE(worst_relative_error(got, ops::timestep_embedding(tc, dim).to_vector()), 1e-6) << dim;
    // The formula in double: error stays at the fp32 rounding of the argument (|t| < 1000).
    const int half = dim / 2;
    std::vector<double> ref(got.size(), 0.0);
    for (std::size_t n = 0; n < t.size(); ++n)
      for (int i = 0; i < half; ++i) {
        const double f = std::exp(-std::log(10000.0) * i / half), arg = t[n] * f;
        ref[n * dim + i] = std::cos(arg);
        ref[n * dim + half + i] = std::sin(arg);
      }
    EXPECT_LE(worst_relative_error(got, ref), 5e-4) << dim;
  }
}

}  // namespace
