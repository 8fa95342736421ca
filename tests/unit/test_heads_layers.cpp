// Head layers: forward against plain double references, backward against central finite
// differences (in double), and the float instantiation against the double one.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "diffprobe/core/error.hpp"
#include "heads/layers.hpp"
#include "heads/loss.hpp"

using namespace diffprobe;
using namespace diffprobe::heads;

namespace {

template <class T>
Buf<T> random_buf(std::vector<std::int64_t> shape, std::uint64_t seed, double lo = -1, double hi = 1) {
  Buf<T> b(std::move(shape));
  Rng rng(seed);
  for (auto& v : b.v) v = static_cast<T>(rng.uniform(lo, hi));
  return b;
}

// Values bounded away from 0 (ReLU's kink) by at least 0.1.
Buf<double> away_from_zero(std::vector<std::int64_t> shape, std::uint64_t seed) {
  Buf<double> b = random_buf<double>(std::move(shape), seed, 0.1, 1.0);
  Rng rng(seed + 1);
  for (auto& v : b.v) v = rng.uniform() < 0.5 ? -v : v;
  return b;
}

double dot(const Buf<double>& a, const Buf<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.v.size(); ++i) s += a.v[i] * b.v[i];
  return s;
}

template <class L> std::vector<ParamRef<double>> params_of(L& layer) {
  std::vector<ParamRef<double>> p;
  layer.parameters("", p);
  return p;
}

// Checks d/dx and d/dparams of loss = sum(w * layer(x)) against central differences.
// Returns the worst error relative to max(1, largest gradient).
template <class L> double grad_check(L& layer, Buf<double> x, std::uint64_t seed = 7) {
  auto params = params_of(layer);
  for (auto& p : params) std::fill(p.param->grad.begin(), p.param->grad.end(), 0.0);
  const Buf<double> y = layer.forward(x, true);
  const Buf<double> w = random_buf<double>(y.shape, seed);
  const Buf<double> gx = layer.backward(w);
  EXPECT_EQ(gx.shape, x.shape);
  auto loss = [&] { return dot(w, layer.forward(x, false)); };
  const double eps = 1e-6;
  double err = 0, ref = 0;
  auto probe = [&](double& v, double analytic) {
    const double keep = v;
    v = keep + eps;
    const double lp = loss();
    v = keep - eps;
    const double lm = loss();
    v = keep;
    const double fd = (lp - lm) / (2 * eps);
    err = std::max(err, std::abs(fd - analytic));
    ref = std::max(ref, std::abs(fd));
  };
  for (std::size_t i = 0; i < x.v.size(); ++i) probe(x.v[i], gx.v[i]);
  for (auto& p : params)
    for (std::size_t i = 0; i < p.param->value.size(); ++i) probe(p.param->value[i], p.param->grad[i]);
  return err / std::max(1.0, ref);
}

// Runs the same layer in float and double (same initialisation) and returns the worst relative
// difference of outputs, input gradients and parameter gradients.
template <class Make> double float_vs_double(Make make, const Buf<double>& xd) {
  auto ld = make(double{});
  auto lf = make(float{});
  Rng r1(11), r2(11);
  for (auto& p : params_of(ld)) p.param->reset(r1);
  std::vector<ParamRef<float>> pf;
  lf.parameters("", pf);
  for (auto& p : pf) p.param->reset(r2);
  Buf<float> xf(xd.shape);
  for (std::size_t i = 0; i < xd.v.size(); ++i) xf.v[i] = static_cast<float>(xd.v[i]);
  const Buf<double> yd = ld.forward(xd, true);
  const Buf<float> yf = lf.forward(xf, true);
  const Buf<double> gd = random_buf<double>(yd.shape, 5);
  Buf<float> gf(gd.shape);
  for (std::size_t i = 0; i < gd.v.size(); ++i) gf.v[i] = static_cast<float>(gd.v[i]);
  const Buf<double> dxd = ld.backward(gd);
  const Buf<float> dxf = lf.backward(gf);
  double worst = 0;
  auto cmp = [&](const auto& a, const auto& b) {
    double scale = 1;
    for (auto v : a) scale = std::max(scale, std::abs(static_cast<double>(v)));
    for (std::size_t i = 0; i < a.size(); ++i)
      worst = std::max(worst, std::abs(a[i] - static_cast<double>(b[i])) / scale);
  };
  cmp(yd.v, yf.v);
  cmp(dxd.v, dxf.v);
  auto pd = params_of(ld);
  for (std::size_t k = 0; k < pd.size(); ++k) cmp(pd[k].param->grad, pf[k].param->grad);
  return worst;
}

// ---- plain double references -----------------------------------------------------------------

std::vector<double> ref_linear(const Buf<double>& x, const Param<double>& w, const Param<double>* b) {
  const auto out = w.shape[0], in = w.shape[1], rows = x.numel() / in;
  std::vector<double> y(static_cast<std::size_t>(rows * out));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < out; ++o) {
      double s = b ? b->value[static_cast<std::size_t>(o)] : 0.0;
      for (std::int64_t i = 0; i < in; ++i)
        s += x.v[static_cast<std::size_t>(r * in + i)] * w.value[static_cast<std::size_t>(o * in + i)];
      y[static_cast<std::size_t>(r * out + o)] = s;
    }
  return y;
}

std::vector<double> ref_layer_norm(const std::vector<double>& x, std::int64_t d, const std::vector<double>& g,
                                   const std::vector<double>& b, double eps) {
  std::vector<double> y(x.size());
  for (std::size_t r = 0; r < x.size() / static_cast<std::size_t>(d); ++r) {
    double m = 0, v = 0;
    for (std::int64_t j = 0; j < d; ++j) m += x[r * d + j];
    m /= d;
    for (std::int64_t j = 0; j < d; ++j) v += (x[r * d + j] - m) * (x[r * d + j] - m);
    v /= d;
    for (std::int64_t j = 0; j < d; ++j) y[r * d + j] = (x[r * d + j] - m) / std::sqrt(v + eps) * g[j] + b[j];
  }
  return y;
}

double ref_gelu(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

// Self-attention on one sequence [T, D], weights as in MultiHeadSelfAttention.
std::vector<double> ref_attention(const std::vector<double>& x, std::int64_t t, std::int64_t d, int heads,
                                  const MultiHeadSelfAttention<double>& a) {
  Buf<double> xb({t, d}, x);
  const auto qkv = ref_linear(xb, a.qkv.weight, nullptr);
  const std::int64_t dh = d / heads;
  std::vector<double> o(static_cast<std::size_t>(t * d));
  for (int h = 0; h < heads; ++h)
    for (std::int64_t i = 0; i < t; ++i) {
      std::vector<double> s(static_cast<std::size_t>(t));
      double mx = -1e300;
      for (std::int64_t j = 0; j < t; ++j) {
        double dotp = 0;
        for (std::int64_t c = 0; c < dh; ++c)
          dotp += qkv[i * 3 * d + h * dh + c] * qkv[j * 3 * d + d + h * dh + c];
        s[j] = dotp / std::sqrt(static_cast<double>(dh));
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (auto& v : s) z += (v = std::exp(v - mx));
      for (std::int64_t c = 0; c < dh; ++c) {
        double acc = 0;
        for (std::int64_t j = 0; j < t; ++j) acc += s[j] / z * qkv[j * 3 * d + 2 * d + h * dh + c];
        o[i * d + h * dh + c] = acc;
      }
    }
  return ref_linear(Buf<double>({t, d}, o), a.proj.weight, &a.proj.bias);
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

template <class L> void randomise(L& layer, std::uint64_t seed) {
  Rng rng(seed);
  for (auto& p : params_of(layer))
    for (auto& v : p.param->value) v = rng.uniform(-0.8, 0.8);
}

constexpr double kGradTol = 1e-7;
constexpr double kFloatTol = 2e-5;

}  // namespace

// ---- Linear ------------------------------------------------------------------------------------

TEST(HeadsLayers, LinearForwardMatchesReference) {
  DenseLayer<double> l(5, 3);
  randomise(l, 1);
  const auto x = random_buf<double>({2, 4, 5}, 2);
  const auto y = l.forward(x, false);
  EXPECT_EQ(y.shape, (std::vector<std::int64_t>{2, 4, 3}));
  expect_near_all(y.v, ref_linear(x, l.weight, &l.bias), 1e-12);
}

TEST(HeadsLayers, LinearGradients) {
  DenseLayer<double> l(5, 3);
  EXPECT_LT(grad_check(l, random_buf<double>({2, 4, 5}, 3)), kGradTol);
  DenseLayer<double> nb(4, 6, false);
  EXPECT_LT(grad_check(nb, random_buf<double>({3, 4}, 4)), kGradTol);
  EXPECT_EQ(params_of(nb).size(), 1u);
  EXPECT_LT(
      float_vs_double([](auto t) { return DenseLayer<decltype(t)>(5, 3); }, random_buf<double>({6, 5}, 5)),
      kFloatTol);
}

TEST(HeadsLayers, LinearDefaultInitIsTorchUniform) {
  DenseLayer<double> l(16, 300);
  Rng rng(0);
  l.weight.reset(rng);
  l.bias.reset(rng);
  double mx = 0, mean = 0;
  for (double v : l.weight.value) mx = std::max(mx, std::abs(v)), mean += v;
  mean /= static_cast<double>(l.weight.value.size());
  EXPECT_LE(mx, 0.25);   // U(-1/sqrt(16), 1/sqrt(16))
  EXPECT_GT(mx, 0.245);  // and it fills that range
  EXPECT_NEAR(mean, 0.0, 0.01);
}

TEST(HeadsLayers, LinearRejectsWrongWidthAndBackwardWithoutForward) {
  DenseLayer<double> l(5, 3);
  EXPECT_THROW(l.forward(random_buf<double>({2, 4}, 1), false), ShapeError);
  EXPECT_THROW(l.backward(random_buf<double>({2, 3}, 1)), ArgumentError);
  l.forward(random_buf<double>({2, 5}, 1), true);
  EXPECT_THROW(l.backward(random_buf<double>({2, 4}, 1)), ShapeError);
}

// ---- Activations ---------------------------------------------------------------------------------

TEST(HeadsLayers, ReluForwardAndGradients) {
  ReLU<double> r;
  const auto x = away_from_zero({3, 7}, 1);
  const auto y = r.forward(x, false);
  for (std::size_t i = 0; i < x.v.size(); ++i) EXPECT_EQ(y.v[i], std::max(0.0, x.v[i]));
  EXPECT_LT(grad_check(r, x), kGradTol);
  EXPECT_LT(float_vs_double([](auto t) { return ReLU<decltype(t)>(); }, away_from_zero({4, 5}, 2)),
            kFloatTol);
}

TEST(HeadsLayers, GeluMatchesTorchExactForm) {
  // torch.nn.functional.gelu (approximate='none') in float64.
  const std::vector<double> x{-3, -1, -0.5, 0, 0.5, 1, 3};
  const std::vector<double> want{-0.00404969409489031, -0.15865525393145702, -0.15426876936299344, 0.0,
                                 0.34573123063700656,  0.841344746068543,    2.99595030590511};
  GELU<double> g;
  const auto y = g.forward(Buf<double>({7}, x), false);
  expect_near_all(y.v, want, 1e-15);
  EXPECT_NEAR(ref_gelu(0.5), want[4], 1e-15);
}

TEST(HeadsLayers, GeluGradients) {
  GELU<double> g;
  EXPECT_LT(grad_check(g, random_buf<double>({3, 9}, 4, -3, 3)), kGradTol);
  EXPECT_LT(float_vs_double([](auto t) { return GELU<decltype(t)>(); }, random_buf<double>({5, 8}, 5, -3, 3)),
            kFloatTol);
}

// ---- LayerNorm ---------------------------------------------------------------------------------

TEST(HeadsLayers, LayerNormOverChwMatchesReference) {
  LayerNorm<double> ln({3, 2, 2}, 1e-5);
  randomise(ln, 3);
  const auto x = random_buf<double>({4, 3, 2, 2}, 4, -2, 3);
  const auto y = ln.forward(x, false);
  expect_near_all(y.v, ref_layer_norm(x.v, 12, ln.weight.value, ln.bias.value, 1e-5), 1e-12);
  EXPECT_EQ(ln.weight.shape, (std::vector<std::int64_t>{3, 2, 2}));
}

TEST(HeadsLayers, LayerNormDefaultsAreIdentityAffine) {
  LayerNorm<double> ln({4});
  Rng rng(0);
  ln.weight.reset(rng);
  ln.bias.reset(rng);
  const auto y = ln.forward(Buf<double>({1, 4}, {1, 2, 3, 4}), false);
  const double sd = std::sqrt(1.25 + 1e-5);
  expect_near_all(y.v, {-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd}, 1e-12);
}

TEST(HeadsLayers, LayerNormGradients) {
  LayerNorm<double> ln({3, 2, 2});
  randomise(ln, 5);
  EXPECT_LT(grad_check(ln, random_buf<double>({3, 3, 2, 2}, 6)), kGradTol);
  LayerNorm<double> tok({6});
  randomise(tok, 7);
  EXPECT_LT(grad_check(tok, random_buf<double>({2, 5, 6}, 8)), kGradTol);
  EXPECT_LT(float_vs_double(
                [](auto t) {
                  return LayerNorm<decltype(t)>({4, 3});
                },
                random_buf<double>({3, 4, 3}, 9)),
            kFloatTol);
}

TEST(HeadsLayers, LayerNormRejectsWrongTrailingShape) {
  LayerNorm<double> ln({3, 2, 2});
  EXPECT_THROW(ln.forward(random_buf<double>({2, 3, 2, 3}, 1), false), ShapeError);
  EXPECT_THROW(ln.forward(random_buf<double>({2, 2}, 1), false), ShapeError);
}

// ---- Conv2d ----------------------------------------------------------------------------------

namespace {
std::vector<double> ref_conv(const Buf<double>& x, const ConvLayer<double>& c, int k) {
  const auto n = x.dim(0), ci = x.dim(1), h = x.dim(2), w = x.dim(3), co = c.weight.shape[0];
  const int pad = k / 2;
  std::vector<double> y(static_cast<std::size_t>(n * co * h * w));
  for (std::int64_t b = 0; b < n; ++b)
    for (std::int64_t o = 0; o < co; ++o)
      for (std::int64_t i = 0; i < h; ++i)
        for (std::int64_t j = 0; j < w; ++j) {
          double s = c.bias.value[static_cast<std::size_t>(o)];
          for (std::int64_t cc = 0; cc < ci; ++cc)
            for (int ky = 0; ky < k; ++ky)
              for (int kx = 0; kx < k; ++kx) {
                const auto yy = i + ky - pad, xx = j + kx - pad;
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                s += x.v[static_cast<std::size_t>(((b * ci + cc) * h + yy) * w + xx)] *
                     c.weight.value[static_cast<std::size_t>(((o * ci + cc) * k + ky) * k + kx)];
              }
          y[static_cast<std::size_t>(((b * co + o) * h + i) * w + j)] = s;
        }
  return y;
}
}  // namespace

TEST(HeadsLayers, Conv3x3And1x1MatchDirectConvolution) {
  for (int k : {1, 3}) {
    ConvLayer<double> c(3, 4, k);
    randomise(c, 10 + static_cast<std::uint64_t>(k));
    const auto x = random_buf<double>({2, 3, 4, 5}, 12);
    expect_near_all(c.forward(x, false).v, ref_conv(x, c, k), 1e-12);
  }
}

TEST(HeadsLayers, ConvGradients) {
  for (int k : {1, 3}) {
    ConvLayer<double> c(3, 2, k);
    randomise(c, 20 + static_cast<std::uint64_t>(k));
    EXPECT_LT(grad_check(c, random_buf<double>({2, 3, 3, 4}, 22)), kGradTol) << "kernel " << k;
    EXPECT_LT(float_vs_double([k](auto t) { return ConvLayer<decltype(t)>(3, 5, k); },
                              random_buf<double>({2, 3, 4, 4}, 23)),
              kFloatTol);
  }
  EXPECT_THROW(ConvLayer<double>(3, 2, 5), ConfigError);
  ConvLayer<double> c(3, 2, 3);
  EXPECT_THROW(c.forward(random_buf<double>({2, 4, 3, 3}, 1), false), ShapeError);
}

// ---- Pooling and reshapes ----------------------------------------------------------------------

TEST(HeadsLayers, AdaptiveAvgPoolMatchesTorchBins) {
  // torch.nn.functional.adaptive_avg_pool2d(arange(20).reshape(1, 1, 5, 4), (3, 2)): overlapping bins.
  AdaptiveAvgPool2d<double> p(3, 2);
  Buf<double> x({1, 1, 5, 4});
  for (std::size_t i = 0; i < 20; ++i) x.v[i] = static_cast<double>(i);
  expect_near_all(p.forward(x, false).v, {2.5, 4.5, 8.5, 10.5, 14.5, 16.5}, 1e-12);
  EXPECT_LT(grad_check(p, random_buf<double>({2, 2, 5, 4}, 3)), kGradTol);
  EXPECT_LT(float_vs_double([](auto t) { return AdaptiveAvgPool2d<decltype(t)>(2, 3); },
                            random_buf<double>({2, 3, 5, 7}, 4)),
            kFloatTol);
  EXPECT_THROW(p.forward(random_buf<double>({1, 1, 2, 4}, 1), false), ShapeError);  // cannot pool up
}

TEST(HeadsLayers, GlobalPoolFlattenAndTokenReshapes) {
  const auto x = random_buf<double>({2, 3, 2, 2}, 1);
  GlobalAvgPool<double> gap;
  const auto g = gap.forward(x, false);
  EXPECT_NEAR(g.v[4], (x.v[16] + x.v[17] + x.v[18] + x.v[19]) / 4, 1e-15);  // sample 1, channel 1
  EXPECT_LT(grad_check(gap, x), kGradTol);

  Flatten<double> fl;
  const auto f = fl.forward(x, false);
  EXPECT_EQ(f.shape, (std::vector<std::int64_t>{2, 12}));
  EXPECT_EQ(f.v, x.v);
  EXPECT_LT(grad_check(fl, x), kGradTol);

  ToTokens<double> tt;
  const auto t = tt.forward(x, false);
  EXPECT_EQ(t.shape, (std::vector<std::int64_t>{2, 4, 3}));
  EXPECT_EQ(t.v[(1 * 4 + 2) * 3 + 1],
            x.v[((1 * 3 + 1) * 2 + 1) * 2 + 0]);  // t[1, pos 2, c 1] = x[1, 1, 1, 0]
  EXPECT_LT(grad_check(tt, x), kGradTol);
}

TEST(HeadsLayers, ClsTokenIsZeroInitialisedAndPrepended) {
  ClsToken<double> cls(3);
  Rng rng(0);
  cls.token.reset(rng);
  for (double v : cls.token.value) EXPECT_EQ(v, 0.0);
  EXPECT_EQ(cls.token.shape, (std::vector<std::int64_t>{1, 1, 3}));
  randomise(cls, 2);
  const auto x = random_buf<double>({2, 4, 3}, 3);
  const auto y = cls.forward(x, false);
  EXPECT_EQ(y.shape, (std::vector<std::int64_t>{2, 5, 3}));
  EXPECT_EQ(y.v[15], cls.token.value[0]);  // sample 1, token 0
  EXPECT_EQ(y.v[18], x.v[12]);             // sample 1, token 1 = input token 0
  EXPECT_LT(grad_check(cls, x), kGradTol);

  TakeToken<double> take(0);
  const auto c = take.forward(y, false);
  EXPECT_EQ(c.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(c.v[3], cls.token.value[0]);
  EXPECT_LT(grad_check(take, x), kGradTol);
}

// ---- Attention and the transformer block ---------------------------------------------------------

TEST(HeadsLayers, AttentionMatchesReference) {
  MultiHeadSelfAttention<double> a(8, 2);
  randomise(a, 30);
  const auto x = random_buf<double>({2, 5, 8}, 31);
  const auto y = a.forward(x, false);
  for (std::int64_t n = 0; n < 2; ++n) {
    const std::vector<double> xs(x.v.begin() + n * 40, x.v.begin() + (n + 1) * 40);
    const std::vector<double> ys(y.v.begin() + n * 40, y.v.begin() + (n + 1) * 40);
    expect_near_all(ys, ref_attention(xs, 5, 8, 2, a), 1e-12);
  }
  auto names = std::vector<ParamRef<double>>{};
  a.parameters("attn", names);
  ASSERT_EQ(names.size(), 3u);  // no qkv bias
  EXPECT_EQ(names[0].name, "attn.qkv.weight");
  EXPECT_EQ(names[1].name, "attn.proj.weight");
  EXPECT_EQ(names[2].name, "attn.proj.bias");
  EXPECT_THROW(MultiHeadSelfAttention<double>(10, 4), ConfigError);
}

TEST(HeadsLayers, AttentionGradients) {
  MultiHeadSelfAttention<double> a(8, 2);
  randomise(a, 32);
  EXPECT_LT(grad_check(a, random_buf<double>({2, 5, 8}, 33)), kGradTol);
  MultiHeadSelfAttention<double> one(6, 1);
  randomise(one, 34);
  EXPECT_LT(grad_check(one, random_buf<double>({1, 3, 6}, 35)), kGradTol);
  EXPECT_LT(float_vs_double([](auto t) { return MultiHeadSelfAttention<decltype(t)>(8, 4); },
                            random_buf<double>({3, 6, 8}, 36)),
            kFloatTol);
}

TEST(HeadsLayers, TransformerBlockMatchesPreNormReference) {
  TransformerBlock<double> b(8, 2, 3);
  randomise(b, 40);
  const auto x = random_buf<double>({1, 4, 8}, 41);
  const auto y = b.forward(x, false);
  // x + attn(norm1(x)); then h + fc2(gelu(fc1(norm2(h)))).
  auto h =
      ref_attention(ref_layer_norm(x.v, 8, b.norm1.weight.value, b.norm1.bias.value, 1e-5), 4, 8, 2, b.attn);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += x.v[i];
  auto m =
      ref_linear(Buf<double>({4, 8}, ref_layer_norm(h, 8, b.norm2.weight.value, b.norm2.bias.value, 1e-5)),
                 b.fc1.weight, &b.fc1.bias);
  EXPECT_EQ(m.size(), 4u * 24u);  // MLP ratio 3
  for (auto& v : m) v = ref_gelu(v);
  m = ref_linear(Buf<double>({4, 24}, m), b.fc2.weight, &b.fc2.bias);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += m[i];
  expect_near_all(y.v, h, 1e-12);
}

TEST(HeadsLayers, TransformerBlockGradientsAndNames) {
  TransformerBlock<double> b(8, 2, 2);
  randomise(b, 42);
  EXPECT_LT(grad_check(b, random_buf<double>({2, 4, 8}, 43)), kGradTol);
  EXPECT_LT(float_vs_double([](auto t) { return TransformerBlock<decltype(t)>(8, 2, 2); },
                            random_buf<double>({2, 5, 8}, 44)),
            kFloatTol);
  std::vector<ParamRef<double>> p;
  b.parameters("blocks.0", p);
  std::vector<std::string> names;
  for (auto& r : p) names.push_back(r.name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight",
                       "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias", "blocks.0.norm2.weight",
                       "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias",
                       "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias"}));
}

TEST(HeadsLayers, SequentialChainsAndNames) {
  Sequential<double> s;
  s.add("fc0", std::make_unique<DenseLayer<double>>(4, 6)).add("act", std::make_unique<GELU<double>>());
  s.add("fc1", std::make_unique<DenseLayer<double>>(6, 3));
  randomise(s, 50);
  EXPECT_LT(grad_check(s, random_buf<double>({3, 4}, 51)), kGradTol);
  std::vector<ParamRef<double>> p;
  s.parameters("mlp", p);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[2].name, "mlp.fc1.weight");
}

// ---- Cross-entropy -----------------------------------------------------------------------------

TEST(HeadsLayers, CrossEntropyValueAndGradient) {
  const Buf<double> z({2, 3}, {1.0, 2.0, 0.5, -1.0, 0.0, 3.0});
  const int y[] = {1, 0};
  Buf<double> g;
  const auto r = cross_entropy(z, y, &g);
  auto ce = [](double a, double b, double c, int k) {
    const double v[] = {a, b, c};
    return std::log(std::exp(a) + std::exp(b) + std::exp(c)) - v[k];
  };
  EXPECT_NEAR(r.loss, (ce(1, 2, 0.5, 1) + ce(-1, 0, 3, 0)) / 2, 1e-14);
  EXPECT_EQ(r.correct, 1);  // sample 0 right, sample 1 predicts class 2
  // Finite differences of the mean loss.
  for (std::size_t i = 0; i < 6; ++i) {
    Buf<double> zp = z, zm = z;
    zp.v[i] += 1e-6;
    zm.v[i] -= 1e-6;
    const double fd =
        (cross_entropy<double>(zp, y, nullptr).loss - cross_entropy<double>(zm, y, nullptr).loss) / 2e-6;
    EXPECT_NEAR(g.v[i], fd, 1e-9) << i;
  }
  // Large logits stay finite (log-sum-exp is shifted).
  const auto big = cross_entropy<double>(Buf<double>({1, 2}, {1000.0, 0.0}), y, nullptr);
  EXPECT_NEAR(big.loss, 1000.0, 1e-9);
  const int bad[] = {3, 0};
  EXPECT_THROW(cross_entropy<double>(z, bad, nullptr), ArgumentError);
}
