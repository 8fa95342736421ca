#pragma once
// The U-Net's output (`out`, paper block 0): GroupNorm + SiLU + a 3x3 convolution to the
// predicted noise (and variance, with learn_sigma).
#include "model/layers/layer.hpp"

namespace diffprobe::detail {

class OutputHead final : public Layer {
 public:
  OutputHead(int cin, int cout) : cin_(cin), cout_(cout) {}

  void weights(WeightTable& table) override;
  std::string describe() const override { return "GroupNorm + SiLU + Conv" + arrow(cin_, cout_); }
  Shape out_shape(const Shape& in, double& flops) const override {
    flops += conv_flops(in[0], cin_, cout_, in[2], in[3], 3);
    return {in[0], cout_, in[2], in[3]};
  }
  Tensor forward(Tensor x, const Tensor& emb, const ExecContext& ctx) const override;
  void prepare(const ExecContext& ctx, const Shape& in) const override { conv_.prepare(ctx, in); }

 private:
  int cin_, cout_;
  NormWeights norm_;
  ops::Conv2d conv_;
};

}  // namespace diffprobe::detail
