#include "diffprobe/heads/metrics.hpp"

#include <cmath>
#include <limits>
#include <string>

namespace diffprobe {

Report classification_report(const Tensor& logits, const std::vector<int>& labels) {
  const char* where = "classification_report";
  if (!logits.defined()) throw ArgumentError(where, "the logits tensor is undefined");
  if (logits.rank() != 2) throw ShapeError(where, "expects logits [N, K], got " + logits.shape().str());
  if (logits.dtype() != DType::F32)
    throw DTypeError(where, "expects f32 logits, got " + std::string(dtype_name(logits.dtype())));
  if (!logits.device().is_cpu()) throw DeviceError(where, "expects CPU logits");
  const std::int64_t n = logits.dim(0), k = logits.dim(1);
  if (k < 1) throw ShapeError(where, "logits have no classes");
  if (static_cast<std::int64_t>(labels.size()) != n)
    throw ShapeError(where,
                     std::to_string(labels.size()) + " labels for " + std::to_string(n) + " rows of logits");
  const float* z = logits.data<const float>();
  Report r;
  r.count = n;
  r.num_classes = static_cast<int>(k);
  r.confusion.assign(static_cast<std::size_t>(k * k), 0);
  const std::int64_t top = std::min<std::int64_t>(5, k);
  std::int64_t c1 = 0, c5 = 0;
  double loss = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = z + i * k;
    const int y = labels[static_cast<std::size_t>(i)];
    if (y < 0 || y >= k)
      throw ArgumentError(where, "label " + std::to_string(y) + " of sample " + std::to_string(i) +
                                     " outside [0, " + std::to_string(k) + ")");
    std::int64_t arg = 0, rank = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      if (!std::isfinite(row[j]))
        throw NumericError(where, "non-finite logit in sample " + std::to_string(i));
      if (row[j] > row[arg]) arg = j;
      // Classes ranked above the label: larger logits, and equal ones with a lower index.
      if (row[j] > row[y] || (row[j] == row[y] && j < y)) ++rank;
    }
    double sum = 0;
    for (std::int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(row[j]) - row[arg]);
    loss += std::log(sum) + row[arg] - row[y];
    c1 += arg == y;
    c5 += rank < top;
    ++r.confusion[static_cast<std::size_t>(y * k + arg)];
  }
  r.top1 = n ? static_cast<double>(c1) / static_cast<double>(n) : 0.0;
  r.top5 = n ? static_cast<double>(c5) / static_cast<double>(n) : 0.0;
  r.loss = n ? loss / static_cast<double>(n) : 0.0;
  r.per_class_accuracy.resize(static_cast<std::size_t>(k));
  for (std::int64_t c = 0; c < k; ++c) {
    std::int64_t total = 0;
    for (std::int64_t j = 0; j < k; ++j) total += r.confusion[static_cast<std::size_t>(c * k + j)];
    r.per_class_accuracy[static_cast<std::size_t>(c)] =
        total ? static_cast<double>(r.confusion[static_cast<std::size_t>(c * k + c)]) /
                    static_cast<double>(total)
              : std::numeric_limits<double>::quiet_NaN();
  }
  return r;
}

}  // namespace diffprobe
