// fit_ridge_probe, the heads' closed-form fast path: the head it returns computes the ridge
// solution of a plain double-precision reference (primal and dual solves), alpha is chosen on the
// held-out split, the head saves and loads like a trained one, bad input gets typed errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "diffprobe/core/error.hpp"
#include "diffprobe/heads/ridge_probe.hpp"

using namespace diffprobe;

namespace {

struct Problem {
  Tensor x;  // f32 [n, d] (or [n, c, h, w] with c*h*w = d)
  std::vector<int> y;
};

// Class-dependent means plus noise: learnable but not separable.
Problem make_problem(std::int64_t n, const Shape& sample, int classes, std::uint64_t seed,
                     double noise = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd;
  std::vector<std::int64_t> dims{n};
  for (auto d : sample.vec()) dims.push_back(d);
  const std::int64_t d = sample.numel();
  std::vector<std::vector<double>> means(static_cast<std::size_t>(classes),
                                         std::vector<double>(static_cast<std::size_t>(d)));
  for (auto& m : means)
    for (auto& v : m) v = nd(g);
  Problem p{Tensor::empty(Shape(dims)), {}};
  float* x = p.x.data<float>();
  for (std::int64_t i = 0; i < n; ++i) {
    const int c = static_cast<int>(i % classes);
    p.y.push_back(c);
    for (std::int64_t j = 0; j < d; ++j)
      x[i * d + j] = static_cast<float>(3.0 * j / static_cast<double>(d) +
                                        means[static_cast<std::size_t>(c)][static_cast<std::size_t>(j)] +
                                        noise * nd(g) * (1 + j % 3));
  }
  return p;
}

// The reference: standardise (population std), centre, solve (Z^T Z + lambda I) W = Z^T Y by
// Gaussian elimination in double, lambda = alpha * trace(Z^T Z) / d; logits of `x` rows.
std::vector<double> reference_logits(const Problem& p, int classes, double alpha) {
  const std::int64_t n = p.x.dim(0), d = p.x.numel() / n;
  const float* x = p.x.data<const float>();
  std::vector<float> mean(static_cast<std::size_t>(d)), sd(static_cast<std::size_t>(d));
  for (std::int64_t j = 0; j < d; ++j) {
    double m = 0, q = 0;
    for (std::int64_t i = 0; i < n; ++i) m += x[i * d + j];
    m /= static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i) q += (x[i * d + j] - m) * (x[i * d + j] - m);
    const double s = std::sqrt(q / static_cast<double>(n));
    mean[static_cast<std::size_t>(j)] = static_cast<float>(m);
    sd[static_cast<std::size_t>(j)] = s > 1e-6 ? static_cast<float>(s) : 1.0f;
  }
  std::vector<double> z(static_cast<std::size_t>(n * d));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      z[static_cast<std::size_t>(i * d + j)] = static_cast<double>(
          (x[i * d + j] - mean[static_cast<std::size_t>(j)]) / sd[static_cast<std::size_t>(j)]);
  std::vector<double> zm(static_cast<std::size_t>(d), 0.0), ym(static_cast<std::size_t>(classes), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j)
      zm[static_cast<std::size_t>(j)] += z[static_cast<std::size_t>(i * d + j)] / static_cast<double>(n);
    ym[static_cast<std::size_t>(p.y[static_cast<std::size_t>(i)])] += 1.0 / static_cast<double>(n);
  }
  // Augmented system [A | B], A = Zc^T Zc + lambda I (d x d), B = Zc^T Yc (d x K).
  const std::size_t D = static_cast<std::size_t>(d), K = static_cast<std::size_t>(classes);
  std::vector<double> a(D * (D + K), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::size_t r = 0; r < D; ++r) {
      const double zr = z[static_cast<std::size_t>(i) * D + r] - zm[r];
      for (std::size_t c = 0; c < D; ++c)
        a[r * (D + K) + c] += zr * (z[static_cast<std::size_t>(i) * D + c] - zm[c]);
      for (std::size_t k = 0; k < K; ++k)
        a[r * (D + K) + D + k] +=
            zr * ((p.y[static_cast<std::size_t>(i)] == static_cast<int>(k) ? 1.0 : 0.0) - ym[k]);
    }
  double trace = 0;
  for (std::size_t r = 0; r < D; ++r) trace += a[r * (D + K) + r];
  for (std::size_t r = 0; r < D; ++r) a[r * (D + K) + r] += alpha * trace / static_cast<double>(D);
  for (std::size_t c = 0; c < D; ++c) {  // symmetric positive definite: no pivoting needed
    for (std::size_t r = c + 1; r < D; ++r) {
      const double f = a[r * (D + K) + c] / a[c * (D + K) + c];
      for (std::size_t k = c; k < D + K; ++k) a[r * (D + K) + k] -= f * a[c * (D + K) + k];
    }
  }
  std::vector<double> w(D * K);
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t r = D; r-- > 0;) {
      double s = a[r * (D + K) + D + k];
      for (std::size_t c = r + 1; c < D; ++c) s -= a[r * (D + K) + c] * w[c * K + k];
      w[r * K + k] = s / a[r * (D + K) + r];
    }
  std::vector<double> logits(static_cast<std::size_t>(n) * K);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::size_t k = 0; k < K; ++k) {
      double s = ym[k];
      for (std::size_t j = 0; j < D; ++j)
        s += (z[static_cast<std::size_t>(i) * D + j] - zm[j]) * w[j * K + k];
      logits[static_cast<std::size_t>(i) * K + k] = s;
    }
  return logits;
}

double max_error(const Tensor& logits, const std::vector<double>& ref) {
  const auto v = logits.to_vector();
  double e = 0;
  for (std::size_t i = 0; i < v.size(); ++i) e = std::max(e, std::abs(v[i] - ref[i]));
  return e;
}

}  // namespace

TEST(RidgeProbe, PrimalSolveMatchesTheDoubleReference) {
  const Problem p = make_problem(120, Shape{12}, 4, 1);
  RidgeOptions o;
  o.alphas = {0.05};
  o.val_fraction = 0;
  const RidgeFit fit = fit_ridge_probe(p.x, p.y, 4, o);
  EXPECT_EQ(fit.alpha, 0.05);
  EXPECT_TRUE(std::isnan(fit.val_accuracy));
  const double err = max_error(fit.head.logits(p.x), reference_logits(p, 4, 0.05));
  EXPECT_LT(err, 2e-5) << "worst logit error " << err;
}

TEST(RidgeProbe, DualSolveMatchesTheDoubleReference) {
  // More features than samples, given as a feature map [N, C, H, W]: the N x N solve.
  const Problem p = make_problem(30, Shape{3, 4, 5}, 3, 2);
  RidgeOptions o;
  o.alphas = {0.3};
  o.val_fraction = 0;
  const RidgeFit fit = fit_ridge_probe(p.x, p.y, 3, o);
  const double err = max_error(fit.head.logits(p.x), reference_logits(p, 3, 0.3));
  EXPECT_LT(err, 2e-5) << "worst logit error " << err;
}

TEST(RidgeProbe, ChoosesTheStrengthOnTheHeldOutSplit) {
  const Problem p = make_problem(400, Shape{40}, 5, 3, 2.5);
  RidgeOptions o;
  o.alphas = {1e-6, 1e-2, 1.0, 100.0};
  o.val_fraction = 0.25;
  const RidgeFit fit = fit_ridge_probe(p.x, p.y, 5, o);
  ASSERT_EQ(fit.val_accuracies.size(), 4u);
  const auto best = std::max_element(fit.val_accuracies.begin(), fit.val_accuracies.end());
  EXPECT_EQ(fit.alpha, o.alphas[static_cast<std::size_t>(best - fit.val_accuracies.begin())]);
  EXPECT_EQ(fit.val_accuracy, *best);
  // The refit on every row uses the chosen alpha: the reference with that alpha agrees.
  EXPECT_LT(max_error(fit.head.logits(p.x), reference_logits(p, 5, fit.alpha)), 5e-5);
  // The same seed, the same split and choice.
  EXPECT_EQ(fit_ridge_probe(p.x, p.y, 5, o).val_accuracies, fit.val_accuracies);
  // Learnable data: well above chance (20 %).
  EXPECT_GT(fit.head.evaluate(p.x, p.y).top1, 0.6);
}

TEST(RidgeProbe, TheHeadSavesAndLoadsLikeATrainedOne) {
  const Problem p = make_problem(80, Shape{2, 2, 2}, 3, 4);
  const RidgeFit fit = fit_ridge_probe(p.x, p.y, 3);
  EXPECT_EQ(fit.head.spec().inputs.at(0), (Shape{2, 2, 2}));
  const auto path = std::filesystem::temp_directory_path() /
                    ("diffprobe_ridge_" + std::to_string(::getpid()) + ".safetensors");
  fit.head.save(path);
  const Head back = Head::load(path);
  std::filesystem::remove(path);
  EXPECT_EQ(back.logits(p.x).to_vector(), fit.head.logits(p.x).to_vector());
  // bf16 features are accepted (converted to f32 first).
  EXPECT_NO_THROW(fit_ridge_probe(p.x.to_dtype(DType::BF16), p.y, 3));
}

TEST(RidgeProbe, BadInputGetsTypedErrors) {
  Problem p = make_problem(20, Shape{4}, 2, 5);
  EXPECT_THROW(fit_ridge_probe(p.x, std::vector<int>(19, 0), 2), ShapeError);
  std::vector<int> bad = p.y;
  bad[3] = 2;
  EXPECT_THROW(fit_ridge_probe(p.x, bad, 2), ArgumentError);
  EXPECT_THROW(fit_ridge_probe(p.x, p.y, 1), ArgumentError);
  EXPECT_THROW(fit_ridge_probe(Tensor{}, p.y, 2), ArgumentError);
  EXPECT_THROW(fit_ridge_probe(Tensor::empty(Shape{20}), p.y, 2), ShapeError);
  RidgeOptions o;
  o.alphas = {};
  EXPECT_THROW(fit_ridge_probe(p.x, p.y, 2, o), ArgumentError);
  o.alphas = {-1.0};
  EXPECT_THROW(fit_ridge_probe(p.x, p.y, 2, o), ArgumentError);
  o.alphas = {1.0};
  o.val_fraction = 1.0;
  EXPECT_THROW(fit_ridge_probe(p.x, p.y, 2, o), ArgumentError);
  p.x.data<float>()[7] = std::nanf("");
  EXPECT_THROW(fit_ridge_probe(p.x, p.y, 2), NumericError);
}
