#pragma once
// Pools a block's feature map and flattens it into a feature vector per sample, as the paper's
// heads expect: adaptive average pooling to p x p (the paper's), adaptive max, global average, none.
#include <string>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe {

enum class PoolKind { Average, Max, GlobalAverage, None };

struct PoolSpec {
  PoolKind kind = PoolKind::Average;
  int size = 2;  // p for Average / Max

  /// "avg:2", "max:4", "gap", "none" (ArgumentError otherwise).
  static PoolSpec parse(const std::string& text);
  std::string str() const;
};

class Pooler {
 public:
  explicit Pooler(PoolSpec spec = {});
  /// [N, C, H, W] (any layout) -> pooled map [N, C, p, p] in NCHW order (Contiguous);
  /// None returns the map itself in NCHW order. ArgumentError when p > H or W.
  Tensor pool(const Tensor& features, const ExecContext& ctx = {}) const;
  /// pool() flattened to [N, C*p*p] in PyTorch's flatten order (channel-major).
  Tensor operator()(const Tensor& features, const ExecContext& ctx = {}) const;
  /// The pooled map's shape for a feature map shape.
  Shape pooled_shape(const Shape& features) const;
  const PoolSpec& spec() const noexcept { return spec_; }

 private:
  PoolSpec spec_;
};

}  // namespace diffprobe
