// Closed-form ridge probe: standardise, centre, solve the normal equations once per alpha through
// one eigendecomposition (so the whole alpha grid costs one factorisation), pick alpha on the
// held-out split, refit on every row.
#include "diffprobe/heads/ridge_probe.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "diffprobe/core/error.hpp"
#include "diffprobe/core/threads.hpp"
#include "heads/rng.hpp"

namespace diffprobe {
namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;

constexpr const char* kWhere = "fit_ridge_probe";
constexpr std::int64_t kMaxSolve = 16384;

// Rows `rows` of z, centred on their own mean (returned in `mean`).
MatF centred_rows(const MatF& z, const std::vector<std::int64_t>& rows, Eigen::RowVectorXd& mean) {
  MatF out(static_cast<Eigen::Index>(rows.size()), z.cols());
  mean = Eigen::RowVectorXd::Zero(z.cols());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    out.row(static_cast<Eigen::Index>(i)) = z.row(rows[i]);
    mean += z.row(rows[i]).cast<double>();
  }
  mean /= static_cast<double>(rows.size());
  const Eigen::RowVectorXf mf = mean.cast<float>();
  out.rowwise() -= mf;
  mean = mf.cast<double>();  // the mean actually subtracted
  return out;
}

// A^T A (or A A^T when `outer`) in double, from float products over blocks of 512 rows (or
// columns), so the accumulation over many samples keeps double precision at float GEMM speed.
MatD gram(const MatF& a, bool outer) {
  const Eigen::Index n = a.rows(), d = a.cols();
  if (outer) {
    MatD g = MatD::Zero(n, n);
    for (Eigen::Index c0 = 0; c0 < d; c0 += 512) {
      const Eigen::Index c = std::min<Eigen::Index>(512, d - c0);
      const MatF blk = a.middleCols(c0, c);
      const Eigen::MatrixXf p = blk * blk.transpose();
      g += p.cast<double>();
    }
    return g;
  }
  MatD g = MatD::Zero(d, d);
  for (Eigen::Index r0 = 0; r0 < n; r0 += 512) {
    const Eigen::Index r = std::min<Eigen::Index>(512, n - r0);
    const Eigen::MatrixXf p = a.middleRows(r0, r).transpose() * a.middleRows(r0, r);
    g += p.cast<double>();
  }
  return g;
}

// Centred one-hot targets of `rows` and their column means.
MatD centred_targets(const std::vector<int>& y, const std::vector<std::int64_t>& rows, int k, VecD& mean) {
  MatD t = MatD::Zero(static_cast<Eigen::Index>(rows.size()), k);
  for (std::size_t i = 0; i < rows.size(); ++i)
    t(static_cast<Eigen::Index>(i), y[static_cast<std::size_t>(rows[i])]) = 1;
  mean = t.colwise().mean().transpose();
  t.rowwise() -= mean.transpose();
  return t;
}

// Ridge solutions for a set of lambdas from one eigendecomposition of the smaller Gram matrix.
class RidgeSolver {
 public:
  RidgeSolver(const MatF& zc, const MatD& yc) : dual_(zc.rows() < zc.cols()), zc_(zc) {
    const MatD g = gram(zc, dual_);
    trace_ = g.trace();
    Eigen::SelfAdjointEigenSolver<MatD> es(g);
    if (es.info() != Eigen::Success) throw NumericError(kWhere, "the eigendecomposition did not converge");
    s_ = es.eigenvalues().cwiseMax(0.0);
    v_ = es.eigenvectors();
    if (dual_)
      r_ = v_.transpose() * yc;  // U^T Y
    else
      r_ = v_.transpose() * (zc.cast<double>().transpose() * yc);  // V^T Z^T Y
  }
  /// lambda for a relative strength: alpha times the mean eigenvalue of Z^T Z.
  double lambda(double alpha) const { return alpha * trace_ / static_cast<double>(zc_.cols()); }
  /// W [F, K] for ridge strength lambda.
  MatD weights(double lambda) const {
    const VecD inv = (s_.array() + lambda).inverse();
    const MatD scaled = inv.asDiagonal() * r_;
    if (!dual_) return v_ * scaled;
    return zc_.cast<double>().transpose() * (v_ * scaled);  // Z^T U (S + l)^-1 U^T Y
  }

 private:
  bool dual_;
  const MatF& zc_;
  double trace_ = 0;
  VecD s_;
  MatD v_, r_;
};

double accuracy(const MatF& z, const std::vector<std::int64_t>& rows, const std::vector<int>& y,
                const MatD& w, const VecD& bias) {
  if (rows.empty()) return std::numeric_limits<double>::quiet_NaN();
  MatD zr(static_cast<Eigen::Index>(rows.size()), z.cols());
  for (std::size_t i = 0; i < rows.size(); ++i)
    zr.row(static_cast<Eigen::Index>(i)) = z.row(rows[i]).cast<double>();
  const MatD scores = (zr * w).rowwise() + bias.transpose();
  std::int64_t correct = 0;
  for (Eigen::Index i = 0; i < scores.rows(); ++i) {
    Eigen::Index arg = 0;
    scores.row(i).maxCoeff(&arg);  // the first maximum, as the heads' top-1
    correct += (arg == y[static_cast<std::size_t>(rows[static_cast<std::size_t>(i)])]);
  }
  return static_cast<double>(correct) / static_cast<double>(rows.size());
}

}  // namespace

RidgeFit fit_ridge_probe(const Tensor& features, const Labels& labels, int num_classes,
                         const RidgeOptions& options) {
  if (!features.defined()) throw ArgumentError(kWhere, "the features tensor is undefined");
  if (features.rank() < 2)
    throw ShapeError(kWhere, "features must be [N, ...], got " + features.shape().str());
  if (num_classes < 2)
    throw ArgumentError(kWhere, "need at least 2 classes, got " + std::to_string(num_classes));
  if (options.alphas.empty()) throw ArgumentError(kWhere, "no ridge strengths (alphas) given");
  for (double a : options.alphas)
    if (!(a > 0) || !std::isfinite(a))
      throw ArgumentError(kWhere, "ridge strengths must be positive and finite");
  if (!(options.val_fraction >= 0 && options.val_fraction < 1))
    throw ArgumentError(kWhere,
                        "val_fraction must be in [0, 1), got " + std::to_string(options.val_fraction));
  const std::int64_t n = features.dim(0), d = features.numel() / std::max<std::int64_t>(1, n);
  const auto& y = labels.values();
  if (static_cast<std::int64_t>(y.size()) != n)
    throw ShapeError(kWhere, std::to_string(y.size()) + " labels for " + std::to_string(n) + " samples");
  if (n < 2 || d < 1)
    throw ShapeError(kWhere, "need at least 2 samples and 1 feature, got " + features.shape().str());
  for (std::size_t i = 0; i < y.size(); ++i)
    if (y[i] < 0 || y[i] >= num_classes)
      throw ArgumentError(kWhere, "label " + std::to_string(y[i]) + " of sample " + std::to_string(i) +
                                      " is outside [0, " + std::to_string(num_classes) + ")");
  if (std::min(n, d) > kMaxSolve)
    throw ArgumentError(kWhere, "min(samples, features) = " + std::to_string(std::min(n, d)) + " exceeds " +
                                    std::to_string(kMaxSolve) +
                                    ": a dense solve that large takes hours; pool the features harder "
                                    "or use fewer samples");
  const ThreadScope threads(options.threads);

  // Features as f32 rows in their stored order (the linear head flattens the same way).
  const Tensor x = features.to_device(Device::cpu()).to_layout(Layout::Contiguous).to_dtype(DType::F32);
  const Eigen::Map<const MatF> xm(x.data<const float>(), n, d);
  if (!xm.allFinite()) throw NumericError(kWhere, "the features contain NaN or infinity");

  // Standardisation over all rows (as TrainConfig::standardize): mean and population std in double.
  std::vector<float> mean(static_cast<std::size_t>(d)), sd(static_cast<std::size_t>(d));
  {
    const Eigen::RowVectorXd m = xm.cast<double>().colwise().mean();
    for (Eigen::Index j = 0; j < d; ++j) {
      double sq = 0;
      for (Eigen::Index i = 0; i < n; ++i) {
        const double v = xm(i, j) - m(j);
        sq += v * v;
      }
      const double s = std::sqrt(sq / static_cast<double>(n));
      mean[static_cast<std::size_t>(j)] = static_cast<float>(m(j));
      sd[static_cast<std::size_t>(j)] = s > 1e-6 ? static_cast<float>(s) : 1.0f;
    }
  }
  MatF z(n, d);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = 0; j < d; ++j)
      z(i, j) = (xm(i, j) - mean[static_cast<std::size_t>(j)]) / sd[static_cast<std::size_t>(j)];

  // Stratified held-out split: the same fraction of every class, chosen by the seed.
  std::vector<std::int64_t> fit_rows, val_rows;
  if (options.val_fraction > 0) {
    std::vector<std::vector<std::int64_t>> by_class(static_cast<std::size_t>(num_classes));
    for (std::int64_t i = 0; i < n; ++i)
      by_class[static_cast<std::size_t>(y[static_cast<std::size_t>(i)])].push_back(i);
    heads::Rng rng(options.seed);
    std::vector<char> held(static_cast<std::size_t>(n), 0);
    for (auto& rows : by_class) {
      rng.shuffle(rows);
      const auto k =
          static_cast<std::size_t>(std::floor(options.val_fraction * static_cast<double>(rows.size())));
      for (std::size_t i = 0; i < k; ++i) held[static_cast<std::size_t>(rows[i])] = 1;
    }
    for (std::int64_t i = 0; i < n; ++i)
      (held[static_cast<std::size_t>(i)] ? val_rows : fit_rows).push_back(i);
    if (fit_rows.size() < 2)
      throw ArgumentError(kWhere, "too few samples left to fit after the held-out split");
  }

  RidgeFit out{Head::linear(features.shape(), num_classes),
               options.alphas.front(),
               std::numeric_limits<double>::quiet_NaN(),
               {}};
  auto solve = [&](const std::vector<std::int64_t>& rows, std::vector<double> alphas) {
    Eigen::RowVectorXd zmean;
    VecD ymean;
    const MatF zc = centred_rows(z, rows, zmean);
    const MatD yc = centred_targets(y, rows, num_classes, ymean);
    const RidgeSolver solver(zc, yc);
    std::vector<std::pair<MatD, VecD>> fits;
    for (double a : alphas) {
      MatD w = solver.weights(solver.lambda(a));
      VecD b = ymean - (zmean * w).transpose();
      fits.emplace_back(std::move(w), std::move(b));
    }
    return fits;
  };

  if (!val_rows.empty() && options.alphas.size() > 1) {
    const auto fits = solve(fit_rows, options.alphas);
    double best = -1;
    for (std::size_t i = 0; i < fits.size(); ++i) {
      const double acc = accuracy(z, val_rows, y, fits[i].first, fits[i].second);
      out.val_accuracies.push_back(acc);
      if (acc > best) {  // ties keep the smaller alpha (listed first)
        best = acc;
        out.alpha = options.alphas[i];
      }
    }
    out.val_accuracy = best;
  }
  std::vector<std::int64_t> all(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) all[static_cast<std::size_t>(i)] = i;
  const auto final_fit = solve(all, {out.alpha});
  const MatD& w = final_fit[0].first;  // [F, K]
  const VecD& b = final_fit[0].second;
  if (!w.allFinite() || !b.allFinite()) throw NumericError(kWhere, "the ridge solution is not finite");

  // Into the linear head: weight [K, F] (PyTorch's nn.Linear), bias [K], the standardisation.
  io::NamedTensors sd_in = out.head.state_dict();
  io::NamedTensors state;
  for (const auto& [name, t] : sd_in) {
    std::vector<float> v(static_cast<std::size_t>(t.numel()));
    if (t.rank() == 2 && t.dim(0) == num_classes && t.dim(1) == d) {
      for (int k = 0; k < num_classes; ++k)
        for (std::int64_t j = 0; j < d; ++j)
          v[static_cast<std::size_t>(k * d + j)] = static_cast<float>(w(j, k));
    } else if (t.rank() == 1 && t.dim(0) == num_classes) {
      for (int k = 0; k < num_classes; ++k) v[static_cast<std::size_t>(k)] = static_cast<float>(b(k));
    } else {
      throw UnsupportedError(kWhere, "unexpected linear-head parameter '" + name + "' " + t.shape().str());
    }
    state.set(name, Tensor::from_vector(t.shape(), v));
  }
  const Shape per_sample = out.head.spec().inputs.at(0);
  state.set("standardize.0.mean", Tensor::from_vector(per_sample, mean));
  state.set("standardize.0.std", Tensor::from_vector(per_sample, sd));
  out.head.load_state_dict(state);
  return out;
}

}  // namespace diffprobe
