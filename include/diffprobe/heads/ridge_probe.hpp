#pragma once
// The heads' fast path: a linear classifier fitted in closed form (ridge regression of one-hot
// targets on standardised features), with the ridge strength chosen on a held-out split. One
// linear solve instead of 30 epochs of gradient steps, so far cheaper than the trained linear
// probe, and it ranks features (blocks, timesteps, poolings) like it (docs/sweep.md measures how
// well), which is what a sweep needs. The result is an ordinary linear Head (standardisation
// included): evaluate, predict or save it like a trained one.
#include <cstdint>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/heads/head.hpp"

namespace diffprobe {

struct RidgeOptions {
  /// Ridge strengths, relative to the mean eigenvalue of the standardised features' Gram matrix
  /// (so the same grid suits any feature count): lambda = alpha * trace(X^T X) / F.
  std::vector<double> alphas = {1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  double val_fraction = 0.1;  // held out (stratified by class) to choose alpha; 0: use alphas[0]
  std::uint64_t seed = 0;     // the held-out split
  int threads = 0;            // <= 0: default_threads()
};

struct RidgeFit {
  Head head;                           // linear, with the standardisation the fit used
  double alpha = 0;                    // the chosen relative strength
  double val_accuracy = 0;             // top-1 of the chosen alpha on the held-out split (NaN without one)
  std::vector<double> val_accuracies;  // per alpha, in RidgeOptions::alphas order
};

/// Fits a linear head to f32/f16/bf16 features [N, ...] (flattened per sample, NCHW or NHWC as
/// stored) and labels in [0, classes). The standardisation (mean and population std per feature,
/// std < 1e-6 treated as 1) is fitted on all N rows, as `TrainConfig::standardize` does; the
/// held-out split only chooses alpha, then the head is refitted on all rows. The normal equations
/// are solved in double precision on the smaller side (F x F, or N x N when N < F).
/// ShapeError / ArgumentError on mismatched labels or shapes, NumericError on a non-finite feature,
/// ArgumentError when min(N, F) > 16384 (a dense solve of that size takes hours: pool harder).
RidgeFit fit_ridge_probe(const Tensor& features, const Labels& labels, int num_classes,
                         const RidgeOptions& options = {});

}  // namespace diffprobe
