#pragma once
// ADM's AttentionBlock: GroupNorm, a 1x1 qkv projection, multi-head self-attention over the
// H*W positions, a 1x1 output projection added to the input.
#include "diffprobe/ops/attention.hpp"
#include "model/layers/layer.hpp"

namespace diffprobe::detail {

class AttentionBlock final : public Layer {
 public:
  AttentionBlock(int channels, int heads, ops::QkvOrder order)
      : channels_(channels), heads_(heads), order_(order) {}

  void weights(WeightTable& table) override;
  std::string describe() const override;
  Shape out_shape(const Shape& in, double& flops) const override;
  Tensor forward(Tensor x, const Tensor& emb, const ExecContext& ctx) const override;
  void prepare(const ExecContext& ctx, const Shape& in) const override;

 private:
  int channels_, heads_;
  ops::QkvOrder order_;
  NormWeights norm_;
  ops::Conv2d qkv_, proj_;
};

}  // namespace diffprobe::detail
