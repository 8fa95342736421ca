#include "model/layers/timestep_embedding.hpp"

#include <algorithm>

#include "diffprobe/ops/elementwise.hpp"

namespace diffprobe::detail {

void TimestepEmbedding::weights(WeightTable& t) {
  time0_ = t.linear("time_embed.0", model_channels_, dim());
  time2_ = t.linear("time_embed.2", dim(), dim());
  if (num_classes_ > 0) label_emb_ = t.tensor("label_emb.weight", {num_classes_, dim()});
}

Tensor TimestepEmbedding::forward(const Tensor& t, const Tensor& labels, const ExecContext& ctx) const {
  Tensor emb = ops::timestep_embedding(t, model_channels_, ctx);
  emb = time0_.forward(emb, ctx);
  emb = time2_.forward(emb, ctx, /*silu_input=*/true);
  if (num_classes_ == 0) return emb;
  // Gather the label rows on the host (the table stays in host memory), then add them where
  // the embedding lives: in place on the CPU, through ops::add on a GPU.
  const std::int64_t N = emb.dim(0), D = emb.dim(1);
  const float* table = label_emb_.data<float>();
  const std::int64_t* y = labels.data<std::int64_t>();
  if (emb.device().is_cpu()) {
    float* e = emb.data<float>();
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t j = 0; j < D; ++j) e[i * D + j] += table[y[i] * D + j];
    return emb;
  }
  Tensor rows = Tensor::empty(Shape{N, D});
  for (std::int64_t i = 0; i < N; ++i) std::copy_n(table + y[i] * D, D, rows.data<float>() + i * D);
  return ops::add(emb, rows.to_device(emb.device()), ctx);
}

void TimestepEmbedding::prepare(const ExecContext& ctx) const {
  time0_.prepare(ctx);
  time2_.prepare(ctx);
}

}  // namespace diffprobe::detail
