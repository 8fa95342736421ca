#pragma once
// Classification metrics from logits: top-1, top-5, mean cross-entropy, the confusion matrix and
// per-class accuracy.
#include <cstdint>
#include <vector>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe {

struct Report {
  std::int64_t count = 0;
  int num_classes = 0;
  double top1 = 0;  // fractions in [0, 1]
  double top5 = 0;  // top-min(5, classes)
  double loss = 0;  // mean cross-entropy
  /// Row-major [true class][predicted class] counts.
  std::vector<std::int64_t> confusion;
  /// Recall of each class; NaN for a class with no samples.
  std::vector<double> per_class_accuracy;

  std::int64_t confusion_at(int truth, int predicted) const {
    return confusion[static_cast<std::size_t>(truth) * static_cast<std::size_t>(num_classes) +
                     static_cast<std::size_t>(predicted)];
  }
};

/// A sample counts as top-k correct when its label ranks among the k largest logits; ties rank
/// the lower class index first (so top-1 agrees with an argmax that picks the first maximum).
/// `logits` is f32 [N, K]; labels in [0, K). ShapeError / ArgumentError / NumericError otherwise.
Report classification_report(const Tensor& logits, const std::vector<int>& labels);

}  // namespace diffprobe
