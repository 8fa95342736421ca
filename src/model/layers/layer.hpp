#pragma once
// One layer of the ADM U-Net. Each kind (ResBlock, AttentionBlock, Downsample, ...) is one type
// that owns everything about it: its state-dict entries and their binding, its forward, its
// output shape and cost, and the packing of its weights ahead of use. A new kind is one new
// type; the architecture (unet_architecture.cpp) only places it.
#include <string>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"
#include "model/layers/weight_table.hpp"

namespace diffprobe::detail {

inline constexpr float kGroupNormEps = 1e-5f;  // ADM's normalization() (GroupNorm32)

class Layer {
 public:
  virtual ~Layer() = default;
  /// Declares (and, when the table holds weights, binds) every state-dict entry, in the order
  /// the official code registers them. `table` is scoped to the layer's prefix.
  virtual void weights(WeightTable& table) = 0;
  /// A short description for `diffprobe info`: "ResBlock-down(128->128)".
  virtual std::string describe() const = 0;
  /// The output shape for an input shape; adds 2 x multiply-adds of the forward to `flops`.
  virtual Shape out_shape(const Shape& in, double& flops) const = 0;
  /// x is taken by value and moved along, so a layer whose input nothing else holds can take
  /// its fused residual sum in place (Conv2d::forward_add). emb: the timestep embedding [N, D].
  virtual Tensor forward(Tensor x, const Tensor& emb, const ExecContext& ctx) const = 0;
  /// Packs the weights for inputs of shape `in` (batch 1, the model's image size) now.
  virtual void prepare(const ExecContext& ctx, const Shape& in) const = 0;

  Shape output_shape(const Shape& in) const {
    double unused = 0;
    return out_shape(in, unused);
  }
};

/// 2 x multiply-adds of a k x k convolution producing [n, cout, h, w] from cin channels.
inline double conv_flops(std::int64_t n, std::int64_t cin, std::int64_t cout, std::int64_t h, std::int64_t w,
                         int k) {
  return 2.0 * static_cast<double>(n * cout * h * w * cin * k * k);
}

/// "(128->256)". Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on
/// "(" + std::to_string(...) inlined here.
inline std::string arrow(std::int64_t cin, std::int64_t cout) {
  std::string s = "(";
  s += std::to_string(cin);
  s += "->";
  s += std::to_string(cout);
  s += ")";
  return s;
}

}  // namespace diffprobe::detail
