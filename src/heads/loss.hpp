#pragma once
// Softmax cross-entropy over a batch of logits, with its gradient.
#include <cstdint>

#include "heads/buffer.hpp"

namespace diffprobe::heads {

struct LossResult {
  double loss = 0;           // mean over the batch
  std::int64_t correct = 0;  // argmax (first maximum) == label
};

/// logits [N, K]; labels[i] in [0, K). When `grad` is given it receives d(mean loss)/d(logits),
/// i.e. (softmax - onehot) / N.
template <class T> LossResult cross_entropy(const Buf<T>& logits, const int* labels, Buf<T>* grad);

}  // namespace diffprobe::heads
