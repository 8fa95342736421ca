// GroupNorm (+ pre-bias, scale-shift, SiLU) against a double-precision reference, in both layouts,
// through both the AVX-512 and the portable CPU kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/simd.hpp"
#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;

namespace {

std::vector<float> randn(std::size_t n, std::mt19937& rng, float mean = 0.0f, float stddev = 1.0f) {
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// The reference: everything in double, two-pass variance, logical NCHW order.
std::vector<double> reference(const std::vector<float>& x, const Shape& s, const std::vector<float>& gamma,
                              const std::vector<float>& beta, int groups, double eps,
                              const std::vector<float>* pre_bias, const std::vector<float>* scale_shift,
                              bool silu) {
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

// Runs a test body with the AVX-512 kernels allowed or not, restoring the setting.
class KernelPath {
 public:
  explicit KernelPath(bool avx512) : previous_(cpu::simd::set_avx512_allowed(avx512)) {}
  ~KernelPath() { cpu::simd::set_avx512_allowed(previous_); }

 private:
  bool previous_;
};

struct Case {
  std::int64_t n, c, h, w;
  int groups;
};

void run_case(const Case& k, Layout layout, bool use_pb, bool use_ss, bool silu, float offset,
              std::mt19937& rng, double& worst) {
  const Shape s{k.n, k.c, k.h, k.w};
  std::vector<float> x = randn(static_cast<std::size_t>(s.numel()), rng);
  // A large common offset plus a per-channel one: catches E[x^2] - E[x]^2 cancellation.
  for (std::int64_t n = 0; n < k.n; ++n)
    for (std::int64_t c = 0; c < k.c; ++c)
      for (std::int64_t p = 0; p < k.h * k.w; ++p)
        x[(n * k.c + c) * k.h * k.w + p] += offset * (1.0f + 0.3f * std::sin(static_cast<float>(c)));
  std::vector<float> gamma = randn(k.c, rng, 1.0f, 0.5f), beta = randn(k.c, rng, 0.0f, 0.5f);
  std::vector<float> pb = randn(k.n * k.c, rng, 0.0f, 2.0f), ss = randn(k.n * 2 * k.c, rng, 0.0f, 0.5f);

  ops::GroupNormArgs args;
  args.groups = k.groups;
  args.silu = silu;
  if (use_pb) args.pre_bias = Tensor::from_vector(Shape{k.n, k.c}, pb);
  if (use_ss) args.scale_shift = Tensor::from_vector(Shape{k.n, 2 * k.c}, ss);
  ExecContext ctx;
  ctx.threads = 2;
  const Tensor y = ops::group_norm(Tensor::from_vector(s, x, layout), Tensor::from_vector(Shape{k.c}, gamma),
                                   Tensor::from_vector(Shape{k.c}, beta), args, ctx);
  ASSERT_EQ(y.shape(), s);
  ASSERT_EQ(y.layout(), layout);
  const auto ref =
      reference(x, s, gamma, beta, k.groups, 1e-5, use_pb ? &pb : nullptr, use_ss ? &ss : nullptr, silu);
  const double err = worst_relative_error(y.to_vector(), ref);
  worst = std::max(worst, err);
  EXPECT_LE(err, 1e-5) << s.str() << " " << layout_name(layout) << " groups " << k.groups << " pre_bias "
                       << use_pb << " scale_shift " << use_ss << " silu " << silu << " offset " << offset;
}

void run_all(bool avx512) {
  const KernelPath path(avx512);
  std::mt19937 rng(1234);
  const Case cases[] = {{1, 32, 7, 5, 32},  {3, 96, 9, 13, 32}, {1, 192, 5, 7, 32},
                        {2, 320, 5, 7, 32}, {1, 576, 5, 7, 32}, {1, 1024, 5, 7, 32},
                        {3, 32, 9, 13, 8},  {1, 64, 1, 1, 32},  {2, 48, 16, 16, 16}};
  double worst = 0.0;
  for (const Case& k : cases)
    for (Layout layout : {Layout::NHWC, Layout::Contiguous})
      for (int combo = 0; combo < 8; ++combo)
        run_case(k, layout, combo & 1, combo & 2, combo & 4, combo == 5 || combo == 7 ? 100.0f : 0.0f, rng,
                 worst);
  // The large-offset cases with every option off and on.
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    run_case({2, 64, 9, 13, 32}, layout, false, false, false, 100.0f, rng, worst);
    run_case({2, 64, 9, 13, 32}, layout, true, true, true, 1000.0f, rng, worst);
  }
  std::printf("group_norm (%s kernels): worst relative error %.3g\n", avx512 ? "AVX-512" : "portable", worst);
}

Tensor random_tensor(const Shape& s, Layout layout, std::mt19937& rng, float mean = 0.0f) {
  return Tensor::from_vector(s, randn(static_cast<std::size_t>(s.numel()), rng, mean), layout);
}

}  // namespace

TEST(GroupNorm, MatchesDoubleReference) { run_all(true); }

TEST(GroupNorm, PortableKernelsMatchDoubleReference) { run_all(false); }

TEST(GroupNorm, LargeImageWithLargeMean) {
  // Many pixels per group (long fp32 sums) and a mean 100x the spread.
  std::mt19937 rng(7);
  double worst = 0.0;
  for (Layout layout : {Layout::NHWC, Layout::Contiguous})
    run_case({1, 64, 64, 48, 32}, layout, true, true, true, 100.0f, rng, worst);
  std::printf("group_norm 64x48: worst relative error %.3g\n", worst);
}

TEST(GroupNorm, ResultDoesNotDependOnThreadCount) {
  std::mt19937 rng(99);
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Shape s{2, 64, 33, 17};
    const Tensor x = random_tensor(s, layout, rng, 50.0f);
    const Tensor g = random_tensor(Shape{64}, Layout::Contiguous, rng),
                 b = random_tensor(Shape{64}, Layout::Contiguous, rng);
    ops::GroupNormArgs args;
    args.scale_shift = random_tensor(Shape{2, 128}, Layout::Contiguous, rng);
    args.silu = true;
    ExecContext one, two;
    one.threads = 1;
    two.threads = 2;
    const auto a = ops::group_norm(x, g, b, args, one).to_vector();
    const auto c = ops::group_norm(x, g, b, args, two).to_vector();
    ASSERT_EQ(a.size(), c.size());
    for (std::size_t i = 0; i < a.size(); ++i)
      ASSERT_EQ(a[i], c[i]) << "element " << i << " " << layout_name(layout);
  }
}

TEST(GroupNorm, WorksOnABatchSlice) {
  // slice_batch shares memory at an offset: the kernel must honour it.
  std::mt19937 rng(5);
  const Shape s{3, 32, 5, 7};
  std::vector<float> x = randn(static_cast<std::size_t>(s.numel()), rng);
  const std::vector<float> gamma(32, 1.0f), beta(32, 0.0f);
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Tensor full = Tensor::from_vector(s, x, layout);
    const Tensor y = ops::group_norm(full.slice_batch(1, 3), Tensor::from_vector(Shape{32}, gamma),
                                     Tensor::from_vector(Shape{32}, beta));
    const std::vector<float> tail(x.begin() + 32 * 35, x.end());
    const auto ref = reference(tail, Shape{2, 32, 5, 7}, gamma, beta, 32, 1e-5, nullptr, nullptr, false);
    EXPECT_LE(worst_relative_error(y.to_vector(), ref), 1e-5) << layout_name(layout);
  }
}

TEST(GroupNorm, ConstantGroupGivesBeta) {
  // Zero variance: the output is exactly beta (x - mean == 0), no NaN from 0/0.
  const Shape s{1, 32, 3, 3};
  const std::vector<float> x(static_cast<std::size_t>(s.numel()), 42.5f);
  std::vector<float> gamma(32, 2.0f), beta(32);
  for (int c = 0; c < 32; ++c) beta[c] = 0.1f * static_cast<float>(c);
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const auto y = ops::group_norm(Tensor::from_vector(s, x, layout), Tensor::from_vector(Shape{32}, gamma),
                                   Tensor::from_vector(Shape{32}, beta))
                       .to_vector();
    for (int c = 0; c < 32; ++c)
      for (int p = 0; p < 9; ++p) ASSERT_EQ(y[c * 9 + p], beta[c]);
  }
}

TEST(GroupNorm, RejectsBadArguments) {
  std::mt19937 rng(3);
  const Tensor x = random_tensor(Shape{2, 64, 4, 4}, Layout::NHWC, rng);
  const Tensor g = random_tensor(Shape{64}, Layout::Contiguous, rng),
               b = random_tensor(Shape{64}, Layout::Contiguous, rng);
  // Rank.
  EXPECT_THROW(ops::group_norm(random_tensor(Shape{2, 64, 16}, Layout::Contiguous, rng), g, b), ShapeError);
  // Channels not divisible by groups, or no groups.
  ops::GroupNormArgs bad_groups;
  bad_groups.groups = 24;
  EXPECT_THROW(ops::group_norm(x, g, b, bad_groups), ShapeError);
  bad_groups.groups = 0;
  EXPECT_THROW(ops::group_norm(x, g, b, bad_groups), ShapeError);
  // dtype.
  EXPECT_THROW(ops::group_norm(x.to_dtype(DType::F16), g, b), DTypeError);
  EXPECT_THROW(ops::group_norm(x, g.to_dtype(DType::BF16), b), DTypeError);
  // Affine and modulation shapes.
  EXPECT_THROW(ops::group_norm(x, random_tensor(Shape{32}, Layout::Contiguous, rng), b), ShapeError);
  ops::GroupNormArgs bad_bias;
  bad_bias.pre_bias = random_tensor(Shape{1, 64}, Layout::Contiguous, rng);
  EXPECT_THROW(ops::group_norm(x, g, b, bad_bias), ShapeError);
  ops::GroupNormArgs bad_ss;
  bad_ss.scale_shift = random_tensor(Shape{2, 64}, Layout::Contiguous, rng);
  EXPECT_THROW(ops::group_norm(x, g, b, bad_ss), ShapeError);
  // eps.
  ops::GroupNormArgs bad_eps;
  bad_eps.eps = 0.0f;
  EXPECT_THROW(ops::group_norm(x, g, b, bad_eps), ArgumentError);
}

TEST(GroupNorm, PooledIsBitwiseGroupNormThenAvgPool) {
  // avg_pool2x2 = true (the ResBlock-down fusion) must give exactly the two separate ops, in both
  // kernel paths and layouts, with and without SiLU and modulation, on channel counts that leave
  // a partial vector (40 = 2 x 16 + 8) and several samples.
  std::mt19937 rng(11);
  for (bool avx512 : {true, false}) {
    const KernelPath path(avx512);
    for (const Shape& s : {Shape{3, 40, 6, 10}, Shape{2, 64, 8, 8}, Shape{1, 32, 2, 2}})
      for (Layout layout : {Layout::NHWC, Layout::Contiguous})
        for (int variant = 0; variant < 3; ++variant) {
          const std::int64_t N = s[0], C = s[1];
          const Tensor x = random_tensor(s, layout, rng, 3.0f);
          const Tensor g = random_tensor(Shape{C}, Layout::Contiguous, rng),
                       b = random_tensor(Shape{C}, Layout::Contiguous, rng);
          ops::GroupNormArgs a;
          a.groups = 8;
          a.silu = variant != 0;
          if (variant == 1) a.scale_shift = random_tensor(Shape{N, 2 * C}, Layout::Contiguous, rng);
          if (variant == 2) a.pre_bias = random_tensor(Shape{N, C}, Layout::Contiguous, rng);
          const Tensor separate = ops::avg_pool2x2(ops::group_norm(x, g, b, a));
          a.avg_pool2x2 = true;
          const Tensor fused = ops::group_norm(x, g, b, a);
          ASSERT_EQ(fused.shape(), (Shape{N, C, s[2] / 2, s[3] / 2}));
          EXPECT_EQ(fused.layout(), layout);
          const auto f = fused.to_vector(), e = separate.to_vector();
          ASSERT_EQ(f.size(), e.size());
          for (std::size_t i = 0; i < f.size(); ++i)
            ASSERT_EQ(f[i], e[i]) << "at " << i << " " << s.str() << " " << layout_name(layout) << " variant "
                                  << variant << (avx512 ? " AVX-512" : " portable");
        }
  }
}

TEST(GroupNorm, PooledRejectsOddSizes) {
  std::mt19937 rng(12);
  const Tensor g = random_tensor(Shape{32}, Layout::Contiguous, rng),
               b = random_tensor(Shape{32}, Layout::Contiguous, rng);
  ops::GroupNormArgs a;
  a.avg_pool2x2 = true;
  EXPECT_THROW(ops::group_norm(random_tensor(Shape{1, 32, 5, 4}, Layout::NHWC, rng), g, b, a), ShapeError);
  EXPECT_THROW(ops::group_norm(random_tensor(Shape{1, 32, 4, 3}, Layout::NHWC, rng), g, b, a), ShapeError);
}
