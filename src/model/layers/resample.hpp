#pragma once
// ADM's Downsample (a 3x3 convolution of stride 2, `op`) and Upsample (nearest 2x, then a 3x3
// convolution, `conv`), used between levels when resblock_updown is off.
#include "model/layers/layer.hpp"

namespace diffprobe::detail {

class Downsample final : public Layer {
 public:
  explicit Downsample(int channels) : channels_(channels) {}

  void weights(WeightTable& table) override {
    conv_ = table.conv("op", channels_, channels_, 3, /*stride=*/2);
  }
  std::string describe() const override { return "Downsample"; }
  Shape out_shape(const Shape& in, double& flops) const override {
    const std::int64_t H = (in[2] + 1) / 2, W = (in[3] + 1) / 2;  // stride 2, padding 1
    flops += conv_flops(in[0], channels_, channels_, H, W, 3);
    return {in[0], channels_, H, W};
  }
  Tensor forward(Tensor x, const Tensor&, const ExecContext& ctx) const override {
    return conv_.forward(x, ctx);
  }
  void prepare(const ExecContext& ctx, const Shape& in) const override { conv_.prepare(ctx, in); }

 private:
  int channels_;
  ops::Conv2d conv_;
};

class Upsample final : public Layer {
 public:
  explicit Upsample(int channels) : channels_(channels) {}

  void weights(WeightTable& table) override { conv_ = table.conv("conv", channels_, channels_, 3); }
  std::string describe() const override { return "Upsample"; }
  Shape out_shape(const Shape& in, double& flops) const override {
    const std::int64_t H = 2 * in[2], W = 2 * in[3];
    flops += conv_flops(in[0], channels_, channels_, H, W, 3);
    return {in[0], channels_, H, W};
  }
  Tensor forward(Tensor x, const Tensor&, const ExecContext& ctx) const override;
  void prepare(const ExecContext& ctx, const Shape& in) const override {
    conv_.prepare(ctx, Shape{in[0], in[1], 2 * in[2], 2 * in[3]});
  }

 private:
  int channels_;
  ops::Conv2d conv_;
};

}  // namespace diffprobe::detail
