#pragma once
// ADM's conditioning: t -> sinusoidal features -> Linear -> SiLU -> Linear (`time_embed`), plus
// the class's row of `label_emb` for a class-conditional model. Every ResBlock reads the result.
#include "model/layers/weight_table.hpp"

namespace diffprobe::detail {

class TimestepEmbedding {
 public:
  TimestepEmbedding(int model_channels, int num_classes /* 0: unconditional */)
      : model_channels_(model_channels), num_classes_(num_classes) {}

  void weights(WeightTable& table);
  int dim() const noexcept { return 4 * model_channels_; }
  /// t: f32 [N]; labels: i64 [N] on the host (checked by the caller) or undefined. -> [N, dim()].
  Tensor forward(const Tensor& t, const Tensor& labels, const ExecContext& ctx) const;
  void prepare(const ExecContext& ctx) const;

 private:
  int model_channels_, num_classes_;
  ops::Linear time0_, time2_;
  Tensor label_emb_;
};

}  // namespace diffprobe::detail
