#pragma once
// ADM's ResBlock (guided_diffusion/unet.py): GroupNorm+SiLU, conv, the timestep embedding added
// (or applied as scale/shift with use_scale_shift_norm), GroupNorm+SiLU, conv, plus the skip
// (identity, or a 1x1 conv when the channels change). With up/down it resamples both paths
// (BigGAN-style ResBlock-up/down, resblock_updown).
#include "model/layers/layer.hpp"

namespace diffprobe::detail {

class ResBlock final : public Layer {
 public:
  enum class Resample { None, Down, Up };
  ResBlock(int cin, int cout, int emb_dim, bool scale_shift, Resample resample = Resample::None)
      : cin_(cin), cout_(cout), emb_dim_(emb_dim), scale_shift_(scale_shift), resample_(resample) {}

  void weights(WeightTable& table) override;
  std::string describe() const override;
  Shape out_shape(const Shape& in, double& flops) const override;
  Tensor forward(Tensor x, const Tensor& emb, const ExecContext& ctx) const override;
  void prepare(const ExecContext& ctx, const Shape& in) const override;

 private:
  int cin_, cout_, emb_dim_;
  bool scale_shift_;
  Resample resample_;
  NormWeights in_norm_, out_norm_;
  ops::Conv2d in_conv_, out_conv_, skip_;
  ops::Linear emb_;
};

}  // namespace diffprobe::detail
