#pragma once
// The U-Net's first layer (input_blocks.0.0): a 3x3 convolution from the image's channels.
#include "model/layers/layer.hpp"

namespace diffprobe::detail {

class InputConv final : public Layer {
 public:
  InputConv(int cin, int cout) : cin_(cin), cout_(cout) {}

  void weights(WeightTable& table) override { conv_ = table.conv("", cin_, cout_, 3); }
  std::string describe() const override { return "Conv" + arrow(cin_, cout_); }
  Shape out_shape(const Shape& in, double& flops) const override {
    flops += conv_flops(in[0], cin_, cout_, in[2], in[3], 3);
    return {in[0], cout_, in[2], in[3]};
  }
  Tensor forward(Tensor x, const Tensor&, const ExecContext& ctx) const override {
    return conv_.forward(x, ctx);
  }
  void prepare(const ExecContext& ctx, const Shape& in) const override { conv_.prepare(ctx, in); }

 private:
  int cin_, cout_;
  ops::Conv2d conv_;
};

}  // namespace diffprobe::detail
