#pragma once
// A head's network: inputs -> logits, with backward. Built from a HeadSpec, so the same
// architecture exists in float (training) and double (the gradient checks).
#include <cstdint>
#include <memory>
#include <vector>

#include "diffprobe/heads/head_spec.hpp"
#include "heads/layers.hpp"

namespace diffprobe::heads {

template <class T> class Model {
 public:
  virtual ~Model() = default;
  /// One [N, ...per-sample shape] buffer per spec input; returns logits [N, classes].
  virtual Buf<T> forward(std::vector<Buf<T>> inputs, bool training) = 0;
  /// Gradient of the loss w.r.t. the logits in; gradients w.r.t. each input out.
  virtual std::vector<Buf<T>> backward(Buf<T> grad_logits) = 0;
  /// Every parameter, in a fixed order, with its PyTorch-style name.
  virtual std::vector<ParamRef<T>> parameters() = 0;

  /// Re-draws every parameter from `seed` (in parameters() order).
  void reset_parameters(std::uint64_t seed);
  void zero_grad();
};

/// The spec must be valid (HeadSpec::validate()).
template <class T> std::unique_ptr<Model<T>> build_model(const HeadSpec& spec);

/// Side of the token grid after pooling a map of side `side` to at most `max_pool`.
inline std::int64_t pooled_side(std::int64_t side, int max_pool) { return side < max_pool ? side : max_pool; }

}  // namespace diffprobe::heads
