#include "heads/loss.hpp"

#include <cmath>

#include "diffprobe/core/error.hpp"

namespace diffprobe::heads {

template <class T> LossResult cross_entropy(const Buf<T>& logits, const int* labels, Buf<T>* grad) {
  if (logits.rank() != 2)
    throw ShapeError("cross_entropy", "expects logits [N, K], got " + shape_str(logits.shape));
  const std::int64_t n = logits.dim(0), k = logits.dim(1);
  if (grad) *grad = Buf<T>(logits.shape);
  LossResult r;
  double total = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const T* z = logits.data() + i * k;
    const int y = labels[i];
    if (y < 0 || y >= k)
      throw ArgumentError("cross_entropy",
                          "label " + std::to_string(y) + " outside [0, " + std::to_string(k) + ")");
    std::int64_t arg = 0;
    for (std::int64_t j = 1; j < k; ++j)
      if (z[j] > z[arg]) arg = j;
    double sum = 0;  // log-sum-exp shifted by the maximum, in double
    for (std::int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(z[j]) - z[arg]);
    total += std::log(sum) + z[arg] - z[y];
    r.correct += arg == y;
    if (grad) {
      T* g = grad->data() + i * k;
      for (std::int64_t j = 0; j < k; ++j)
        g[j] = static_cast<T>(std::exp(static_cast<double>(z[j]) - z[arg]) / sum / static_cast<double>(n));
      g[y] -= static_cast<T>(1.0 / static_cast<double>(n));
    }
  }
  r.loss = n > 0 ? total / static_cast<double>(n) : 0.0;
  return r;
}

template LossResult cross_entropy<float>(const Buf<float>&, const int*, Buf<float>*);
template LossResult cross_entropy<double>(const Buf<double>&, const int*, Buf<double>*);

}  // namespace diffprobe::heads
