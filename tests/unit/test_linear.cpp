// Linear on the CPU (oneDNN matmul) against a double-precision loop: bias, SiLU on the input,
// several row counts on one layer, thread counts, bf16, and the typed errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;
using ops::Linear;

namespace {

std::vector<float> random_values(std::int64_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// y[n, o] = sum_i f(x[n, i]) * w[o, i] + b[o], f = silu or identity, in double.
std::vector<double> reference_linear(const std::vector<float>& x, const std::vector<float>& w,
                                     const std::vector<float>& b, std::int64_t N, std::int64_t I,
                                     std::int64_t O, bool silu) {
  std::vector<double> y(static_cast<std::size_t>(N * O));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o) {
      double acc = b.empty() ? 0.0 : b[static_cast<std::size_t>(o)];
      for (std::int64_t i = 0; i < I; ++i) {
        double v = x[static_cast<std::size_t>(n * I + i)];
        if (silu) v = v / (1.0 + std::exp(-v));
        acc += v * static_cast<double>(w[static_cast<std::size_t>(o * I + i)]);
      }
      y[static_cast<std::size_t>(n * O + o)] = acc;
    }
  return y;
}

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

struct LinearCase {
  std::int64_t N, I, O;
  bool bias, silu;
};

std::string case_name(const LinearCase& c) {
  return "n" + std::to_string(c.N) + "_" + std::to_string(c.I) + "to" + std::to_string(c.O) +
         (c.bias ? "_bias" : "") + (c.silu ? "_silu" : "");
}

struct LinearProblem {
  explicit LinearProblem(const LinearCase& c, unsigned seed = 11) : c(c) {
    wv = random_values(c.O * c.I, seed);
    if (c.bias) bv = random_values(c.O, seed + 1);
    xv = random_values(c.N * c.I, seed + 2, 4.0f);  // wide enough for SiLU's curved part
    layer = Linear(Tensor::from_vector(Shape{c.O, c.I}, wv),
                   c.bias ? Tensor::from_vector(Shape{c.O}, bv) : Tensor());
    x = Tensor::from_vector(Shape{c.N, c.I}, xv);
    ref = reference_linear(xv, wv, bv, c.N, c.I, c.O, c.silu);
  }
  LinearCase c;
  std::vector<float> wv, bv, xv;
  Linear layer;
  Tensor x;
  std::vector<double> ref;
};

class LinearCases : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearCases, MatchesDoubleReferenceFp32) {
  LinearProblem p(GetParam());
  ExecContext ctx;
  ctx.threads = 2;
  const Tensor y = p.layer.forward(p.x, ctx, p.c.silu);
  EXPECT_EQ(y.shape(), (Shape{p.c.N, p.c.O}));
  const double err = worst_relative_error(y, p.ref);
  std::printf("[ linear fp32 %s ] worst relative error %.3g\n", case_name(p.c).c_str(), err);
  EXPECT_LE(err, 1e-4);
  // The input is left untouched by the SiLU.
  EXPECT_EQ(p.x.to_vector(), p.xv);
}

TEST_P(LinearCases, MatchesDoubleReferenceBf16OrIsUnsupported) {
  LinearProblem p(GetParam());
  ExecContext ctx;
  ctx.threads = 2;
  ctx.precision = Precision::BF16;
  const Expect expect = expect_bf16();
  Tensor y;
  try {
    y = p.layer.forward(p.x, ctx, p.c.silu);
  } catch (const UnsupportedError& e) {
    EXPECT_NE(expect, Expect::Yes) << "this CPU has AVX512-BF16 but bf16 failed: " << e.what();
    return;
  }
  EXPECT_NE(expect, Expect::No) << "bf16 ran on a CPU without AVX512-BF16";
  const double err = worst_relative_error(y, p.ref);
  std::printf("[ linear bf16 %s ] worst relative error %.3g\n", case_name(p.c).c_str(), err);
  EXPECT_LE(err, 1e-2);
  EXPECT_GT(err, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearCases,
                         ::testing::Values(LinearCase{3, 1024, 4096, true, false},
                                           LinearCase{3, 1024, 4096, false, false},
                                           LinearCase{3, 1024, 4096, true, true},
                                           LinearCase{1, 512, 1536, true, true},  // an emb_layers shape
                                           LinearCase{5, 7, 3, true, true},       // tiny, odd sizes
                                           LinearCase{17, 130, 66, false, true}),
                         [](const ::testing::TestParamInfo<LinearCase>& info) {
                           return case_name(info.param);
                         });

TEST(Linear, SameLayerServesSeveralRowCounts) {
  LinearProblem a(LinearCase{3, 256, 384, true, false});
  ExecContext ctx;
  ctx.threads = 2;
  for (int round = 0; round < 2; ++round)
    for (const std::int64_t rows : {3, 1, 8}) {
      for (const bool silu : {false, true}) {
        LinearProblem q(LinearCase{rows, 256, 384, true, silu});  // same seed: same weights as a.layer
        const double err = worst_relative_error(a.layer.forward(q.x, ctx, silu), q.ref);
        EXPECT_LE(err, 1e-4) << "rows " << rows << " silu " << silu << " round " << round;
      }
    }
}

TEST(Linear, OneAndTwoThreadsAgree) {
  LinearProblem p(LinearCase{3, 1024, 1024, true, true});
  ExecContext one, two;
  one.threads = 1;
  two.threads = 2;
  const std::vector<float> a = p.layer.forward(p.x, one, true).to_vector();
  const std::vector<float> b = p.layer.forward(p.x, two, true).to_vector();
  double diff = 0.0, scale = 1.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(a[i])));
  }
  EXPECT_LE(diff / scale, 1e-5);
}

TEST(Linear, PrepareThenForwardAndAllocator) {
  LinearProblem p(LinearCase{4, 320, 1280, true, true});
  CachingAllocator alloc;
  ExecContext ctx;
  ctx.threads = 2;
  ctx.allocator = &alloc;
  p.layer.prepare(ctx);
  p.layer.prepare(ctx);
  {
    const Tensor y = p.layer.forward(p.x, ctx, true);
    EXPECT_GE(alloc.bytes_in_use(), y.nbytes());
    EXPECT_LE(worst_relative_error(y, p.ref), 1e-4);
  }
  const std::size_t sys = alloc.system_allocations();
  EXPECT_LE(worst_relative_error(p.layer.forward(p.x, ctx, true), p.ref), 1e-4);
  EXPECT_EQ(alloc.system_allocations(), sys);
  ExecContext fp16 = ctx;
  fp16.precision = Precision::FP16;
  EXPECT_THROW(p.layer.prepare(fp16), UnsupportedError);
}

TEST(Linear, Errors) {
  const Linear layer(Tensor::from_vector(Shape{6, 4}, random_values(24, 3)),
                     Tensor::from_vector(Shape{6}, random_values(6, 4)));
  const Tensor x = Tensor::from_vector(Shape{2, 4}, random_values(8, 5));
  const ExecContext ctx;
  EXPECT_NO_THROW(layer.forward(x, ctx));
  EXPECT_THROW(layer.forward(Tensor::zeros(Shape{2, 5}), ctx), ShapeError);               // wrong features
  EXPECT_THROW(layer.forward(Tensor::zeros(Shape{2, 4, 1}), ctx), ShapeError);            // rank 3
  EXPECT_THROW(layer.forward(x.to_dtype(DType::BF16), ctx), DTypeError);                  // not f32
  EXPECT_THROW(Linear(Tensor::zeros(Shape{6, 4, 1}), Tensor()), ShapeError);              // rank-3 weight
  EXPECT_THROW(Linear(Tensor::zeros(Shape{6, 4}), Tensor::zeros(Shape{4})), ShapeError);  // bias size
  EXPECT_THROW(Linear(Tensor::zeros(Shape{6, 4}, DType::I32), Tensor()), DTypeError);
  EXPECT_THROW(Linear().forward(x, ctx), ArgumentError);
  ExecContext cuda;
  cuda.device = Device::cuda(0);
  EXPECT_THROW(layer.forward(x, cuda), DeviceError);
  ExecContext fp16;
  fp16.precision = Precision::FP16;
  EXPECT_THROW(layer.forward(x, fp16), UnsupportedError);
  EXPECT_NO_THROW(layer.forward(x, ctx));
}

}  // namespace
