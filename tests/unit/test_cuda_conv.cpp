// cuDNN convolutions and linear layers against the CPU backend (oneDNN) and, on small cases,
// against a double-precision reference written here: 3x3 stride 1 and 2, 1x1, with and without bias
// and a fused residual, NHWC and NCHW, on awkward channel counts (96, 192, 576) and batches (1, 33).
// FP32 must agree to 1e-4 of max(1, max|reference|) (FMA math, no TF32); BF16 / FP16 (fp32
// accumulation) to 2e-2. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;

namespace {

#define REQUIRE_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

std::vector<float> randn(std::size_t n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

ExecContext gpu_ctx(Precision p = Precision::FP32) {
  ExecContext c;
  c.device = Device::cuda();
  c.precision = p;
  return c;
}

Tensor gpu(const Tensor& t) { return t.defined() ? t.to_device(Device::cuda()) : t; }
std::vector<float> host(const Tensor& t) { return t.to_device(Device::cpu()).to_vector(); }

double tolerance(Precision p) { return p == Precision::FP32 ? 1e-4 : 2e-2; }

// Double-precision convolution, logical NCHW in and out, PyTorch weight order.
std::vector<double> conv_reference(const std::vector<float>& x, const Shape& s, const std::vector<float>& w,
                                   std::int64_t O, std::int64_t k, const std::vector<float>* bias,
                                   const std::vector<float>* residual, int stride, int pad) {
  const std::int64_t N = s[0], C = s[1], H = s[2], W = s[3];
  const std::int64_t OH = (H + 2 * pad - k) / stride + 1, OW = (W + 2 * pad - k) / stride + 1;
  std::vector<double> y(static_cast<std::size_t>(N * O * OH * OW));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t oh = 0; oh < OH; ++oh)
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          double acc = bias ? (*bias)[o] : 0.0;
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t kh = 0; kh < k; ++kh)
              for (std::int64_t kw = 0; kw < k; ++kw) {
                const std::int64_t ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += static_cast<double>(x[((n * C + c) * H + ih) * W + iw]) *
                       w[((o * C + c) * k + kh) * k + kw];
              }
          const std::size_t i = static_cast<std::size_t>(((n * O + o) * OH + oh) * OW + ow);
          y[i] = acc + (residual ? (*residual)[i] : 0.0);
        }
  return y;
}

struct ConvCase {
  std::int64_t n, c, h, w, o, k;
  int stride, pad;
};

TEST(CudaConv2d, MatchesCpuInEveryPrecision) {
  REQUIRE_GPU();
  std::mt19937 rng(41);
  const ConvCase cases[] = {
      {1, 96, 17, 13, 192, 3, 1, 1},   // 3x3, odd spatial size
      {33, 192, 16, 16, 96, 3, 2, 1},  // downsampling conv, batch 33
      {2, 576, 8, 8, 192, 1, 1, 0},    // 1x1 skip projection
      {4, 3, 32, 32, 96, 3, 1, 1},     // the input conv: 3 channels
  };
  double worst[3] = {0.0, 0.0, 0.0};
  for (const ConvCase& k : cases) {
    const Shape s{k.n, k.c, k.h, k.w};
    const float wstd = 1.0f / std::sqrt(static_cast<float>(k.c * k.k * k.k));
    const Tensor w = Tensor::from_vector(Shape{k.o, k.c, k.k, k.k}, randn(k.o * k.c * k.k * k.k, rng, wstd));
    const Tensor b = Tensor::from_vector(Shape{k.o}, randn(k.o, rng));
    for (bool with_bias : {true, false}) {
      const ops::Conv2d cpu_conv(w, with_bias ? b : Tensor{}, {k.stride, k.pad});
      const ops::Conv2d gpu_conv(gpu(w), with_bias ? gpu(b) : Tensor{}, {k.stride, k.pad});
      for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
        const Tensor x = Tensor::from_vector(s, randn(s.numel(), rng), layout);
        const Shape os = cpu_conv.output_shape(s);
        for (bool with_res : {false, true}) {
          const Tensor res = with_res ? Tensor::from_vector(os, randn(os.numel(), rng), layout) : Tensor{};
          const std::vector<float> ref = cpu_conv.forward_add(x, res).to_vector();
          for (Precision p : {Precision::FP32, Precision::BF16, Precision::FP16}) {
            const Tensor y = gpu_conv.forward_add(gpu(x), gpu(res), gpu_ctx(p));
            EXPECT_EQ(y.shape(), os);
            EXPECT_EQ(y.layout(), layout);
            const double e = worst_relative_error(host(y), ref);
            worst[static_cast<int>(p)] = std::max(worst[static_cast<int>(p)], e);
            EXPECT_LE(e, tolerance(p))
                << s.str() << " -> " << k.o << " k" << k.k << " s" << k.stride << " " << layout_name(layout)
                << " bias " << with_bias << " residual " << with_res << " " << precision_name(p);
          }
        }
      }
    }
  }
  std::printf("[ worst ] Conv2d GPU vs CPU relative error fp32 %.3g bf16 %.3g fp16 %.3g\n", worst[0],
              worst[1], worst[2]);
}

TEST(CudaConv2d, MatchesDoubleReferenceAndRepeats) {
  REQUIRE_GPU();
  std::mt19937 rng(42);
  const Shape s{2, 5, 9, 7};
  const std::vector<float> xv = randn(s.numel(), rng), wv = randn(7 * 5 * 9, rng, 0.3f), bv = randn(7, rng);
  const ops::Conv2d conv(gpu(Tensor::from_vector(Shape{7, 5, 3, 3}, wv)),
                         gpu(Tensor::from_vector(Shape{7}, bv)), {2, 1});
  const Shape os = conv.output_shape(s);
  const std::vector<float> rv = randn(os.numel(), rng);
  const auto ref = conv_reference(xv, s, wv, 7, 3, &bv, &rv, 2, 1);
  for (Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const Tensor x = gpu(Tensor::from_vector(s, xv, layout));
    const Tensor r = gpu(Tensor::from_vector(os, rv, layout));
    conv.prepare(gpu_ctx());
    const std::vector<float> first = host(conv.forward_add(x, r, gpu_ctx()));
    EXPECT_LE(worst_relative_error(first, ref), 1e-4) << layout_name(layout);
    // The second call reuses the cached plan and weights: same bits.
    const std::vector<float> second = host(conv.forward_add(x, r, gpu_ctx()));
    EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0)
        << layout_name(layout);
  }
}

TEST(CudaLinear, MatchesCpuAndDoubleReference) {
  REQUIRE_GPU();
  std::mt19937 rng(43);
  for (auto [rows, in, out] : {std::tuple{33, 192, 576}, std::tuple{1, 96, 192}, std::tuple{5, 576, 96}}) {
    const std::vector<float> wv = randn(out * in, rng, 0.1f), bv = randn(out, rng),
                             xv = randn(rows * in, rng, 2.0f);
    const Tensor w = Tensor::from_vector(Shape{out, in}, wv), b = Tensor::from_vector(Shape{out}, bv);
    const Tensor x = Tensor::from_vector(Shape{rows, in}, xv);
    for (bool silu : {false, true}) {
      // Double reference.
      std::vector<double> ref(static_cast<std::size_t>(rows * out));
      for (int r = 0; r < rows; ++r)
        for (int o = 0; o < out; ++o) {
          double acc = bv[o];
          for (int i = 0; i < in; ++i) {
            double v = xv[r * in + i];
            if (silu) v = v / (1.0 + std::exp(-v));
            acc += v * wv[o * in + i];
          }
          ref[r * out + o] = acc;
        }
      const std::vector<float> cpu = ops::Linear(w, b).forward(x, {}, silu).to_vector();
      const ops::Linear lin(gpu(w), gpu(b));
      for (Precision p : {Precision::FP32, Precision::BF16, Precision::FP16}) {
        lin.prepare(gpu_ctx(p));
        const std::vector<float> y = host(lin.forward(gpu(x), gpu_ctx(p), silu));
        EXPECT_LE(worst_relative_error(y, ref), tolerance(p))
            << rows << "x" << in << "->" << out << " " << precision_name(p);
        EXPECT_LE(worst_relative_error(y, cpu), tolerance(p))
            << rows << "x" << in << "->" << out << " " << precision_name(p);
      }
    }
    // Without a bias.
    const ops::Linear nb(gpu(w), Tensor{});
    EXPECT_LE(worst_relative_error(host(nb.forward(gpu(x), gpu_ctx())),
                                   ops::Linear(w, Tensor{}).forward(x).to_vector()),
              1e-4);
  }
}

}  // namespace
