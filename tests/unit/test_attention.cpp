// Multi-head attention from a qkv tensor against a double-precision reference: both layouts,
// both channel orders, several head sizes (including one that is not a multiple of 16), through
// both the AVX-512 and the portable CPU kernels.
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

std::vector<float> randn(std::size_t n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ADM's QKVAttentionLegacy / QKVAttention in double, on logical [N, 3C, T] data.
std::vector<double> reference(const std::vector<float>& qkv, std::int64_t N, std::int64_t C, std::int64_t T,
                              int heads, ops::QkvOrder order) {
  const std::int64_t d = C / heads;
  std::vector<double> out(static_cast<std::size_t>(N * C * T));
  // Channel of element i of role r (q 0, k 1, v 2) in head h.
  auto channel = [&](std::int64_t h, int r, std::int64_t i) {
    return order == ops::QkvOrder::Legacy ? h * 3 * d + r * d + i : r * C + h * d + i;
  };
  std::vector<double> logits(static_cast<std::size_t>(T));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t t = 0; t < T; ++t) {
        const auto at = [&](int r, std::int64_t i, std::int64_t s) {
          return static_cast<double>(qkv[(n * 3 * C + channel(h, r, i)) * T + s]);
        };
        double mx = -1e300;
        for (std::int64_t s = 0; s < T; ++s) {
          double dot = 0.0;
          for (std::int64_t i = 0; i < d; ++i) dot += at(0, i, t) * at(1, i, s);
          logits[s] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, logits[s]);
        }
        double sum = 0.0;
        for (std::int64_t s = 0; s < T; ++s) sum += (logits[s] = std::exp(logits[s] - mx));
        for (std::int64_t i = 0; i < d; ++i) {
          double acc = 0.0;
          for (std::int64_t s = 0; s < T; ++s) acc += logits[s] * at(2, i, s);
          out[(n * C + h * d + i) * T + t] = acc / sum;
        }
      }
  return out;
}

class KernelPath {
 public:
  explicit KernelPath(bool avx512) : previous_(cpu::simd::set_avx512_allowed(avx512)) {}
  ~KernelPath() { cpu::simd::set_avx512_allowed(previous_); }

 private:
  bool previous_;
};

struct Case {
  std::int64_t n, c, h, w;
  int heads;
  float spread;  // stddev of q, k, v: large values make the logits large (tests the max shift)
};

double run_case(const Case& k, std::mt19937& rng, bool all_variants = true) {
  const Shape s{k.n, 3 * k.c, k.h, k.w};
  const std::vector<float> qkv = randn(static_cast<std::size_t>(s.numel()), rng, k.spread);
  double worst = 0.0;
  for (ops::QkvOrder order : {ops::QkvOrder::Legacy, ops::QkvOrder::Split}) {
    const auto ref = reference(qkv, k.n, k.c, k.h * k.w, k.heads, order);
    for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
      ExecContext ctx;
      ctx.threads = 2;
      const Tensor y = ops::attention(Tensor::from_vector(s, qkv, layout), k.heads, order, ctx);
      EXPECT_EQ(y.shape(), (Shape{k.n, k.c, k.h, k.w}));
      EXPECT_EQ(y.layout(), layout);
      const double err = worst_relative_error(y.to_vector(), ref);
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-4) << s.str() << " heads " << k.heads << " " << layout_name(layout) << " "
                           << (order == ops::QkvOrder::Legacy ? "legacy" : "split");
      if (!all_variants) return worst;
    }
  }
  return worst;
}

void run_all(bool avx512) {
  const KernelPath path(avx512);
  std::mt19937 rng(42);
  const Case cases[] = {
      {1, 32, 7, 5, 1, 1.0f},     // d = 32, T = 35 (not a multiple of 16)
      {3, 96, 9, 13, 3, 1.0f},    // batch 3, d = 32, H != W
      {1, 128, 5, 7, 2, 1.0f},    // d = 64
      {2, 256, 7, 5, 2, 1.0f},    // d = 128
      {1, 192, 5, 7, 3, 3.0f},    // large logits: softmax needs the max shift
      {2, 40, 4, 6, 2, 1.0f},     // d = 20: padded head
      {1, 576, 5, 7, 9, 1.0f},    // d = 64, 9 heads
      {1, 1024, 5, 7, 16, 1.0f},  // d = 64, 16 heads
      {1, 64, 1, 1, 1, 1.0f},     // a single token: output = v
      {1, 64, 12, 11, 1, 1.0f},   // T = 132 > one query tile, with a ragged last tile
      {1, 128, 16, 16, 2, 1.0f},  // T = 256: K^T and score rows get a padded stride
  };
  double worst = 0.0;
  for (const Case& k : cases) worst = std::max(worst, run_case(k, rng));
  std::printf("attention (%s kernels): worst relative error %.3g\n", avx512 ? "AVX-512" : "portable", worst);
}

}  // namespace

TEST(Attention, MatchesDoubleReference) { run_all(true); }

TEST(Attention, PortableKernelsMatchDoubleReference) { run_all(false); }

TEST(Attention, ThousandTokens) {
  // 32x32 tokens, 2 heads of 64: many query tiles and long softmax rows (one layout/order).
  std::mt19937 rng(11);
  const double err = run_case({1, 128, 32, 32, 2, 1.5f}, rng, false);
  std::printf("attention T=1024: worst relative error %.3g\n", err);
}

TEST(Attention, ResultDoesNotDependOnThreadCount) {
  std::mt19937 rng(8);
  const Shape s{2, 3 * 128, 9, 13};
  const Tensor qkv = Tensor::from_vector(s, randn(static_cast<std::size_t>(s.numel()), rng), Layout::NHWC);
  ExecContext one, two;
  one.threads = 1;
  two.threads = 2;
  const auto a = ops::attention(qkv, 2, ops::QkvOrder::Legacy, one).to_vector();
  const auto b = ops::attention(qkv, 2, ops::QkvOrder::Legacy, two).to_vector();
  ASSERT_EQ(a, b);
}

TEST(Attention, RejectsBadArguments) {
  std::mt19937 rng(2);
  const auto make = [&](const Shape& s) {
    return Tensor::from_vector(s, randn(static_cast<std::size_t>(s.numel()), rng), Layout::Contiguous);
  };
  const Tensor good = make(Shape{1, 96, 4, 4});
  EXPECT_THROW(ops::attention(make(Shape{1, 96, 16}), 1, ops::QkvOrder::Legacy), ShapeError);    // rank
  EXPECT_THROW(ops::attention(make(Shape{1, 95, 4, 4}), 1, ops::QkvOrder::Legacy), ShapeError);  // not 3C
  EXPECT_THROW(ops::attention(good, 5, ops::QkvOrder::Split), ShapeError);   // 32 channels, 5 heads
  EXPECT_THROW(ops::attention(good, 0, ops::QkvOrder::Legacy), ShapeError);  // no heads
  EXPECT_THROW(ops::attention(good.to_dtype(DType::F16), 1, ops::QkvOrder::Legacy), DTypeError);
  EXPECT_NO_THROW(ops::attention(good, 4, ops::QkvOrder::Split));
}

TEST(Attention, FlopCount) {
  // 2 matmuls of T x T x C multiply-adds per sample.
  EXPECT_DOUBLE_EQ(ops::attention_flops(Shape{2, 3 * 512, 32, 32}, 8),
                   2.0 * 2.0 * 2 * 1024.0 * 1024.0 * 512.0);
}
