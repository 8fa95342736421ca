#include "model/layers/attention_block.hpp"

#include "diffprobe/ops/group_norm.hpp"

namespace diffprobe::detail {

void AttentionBlock::weights(WeightTable& t) {
  norm_ = t.norm("norm", channels_);
  qkv_ = t.conv1x1_from_1d("qkv", channels_, 3 * channels_);
  proj_ = t.conv1x1_from_1d("proj_out", channels_, channels_);
}

std::string AttentionBlock::describe() const { return "Attention(" + std::to_string(heads_) + " heads)"; }

Shape AttentionBlock::out_shape(const Shape& in, double& flops) const {
  const std::int64_t N = in[0], H = in[2], W = in[3];
  flops += conv_flops(N, channels_, 3 * channels_, H, W, 1);
  flops += ops::attention_flops({N, 3 * channels_, H, W}, heads_);
  flops += conv_flops(N, channels_, channels_, H, W, 1);
  return in;
}

Tensor AttentionBlock::forward(Tensor x, const Tensor&, const ExecContext& ctx) const {
  ops::GroupNormArgs a;
  a.eps = kGroupNormEps;
  Tensor qkv = qkv_.forward(ops::group_norm(x, norm_.gamma, norm_.beta, a, ctx), ctx);
  const Tensor att = ops::attention(qkv, heads_, order_, ctx);
  qkv = Tensor();
  return proj_.forward_add(att, std::move(x), ctx);  // proj_out(a) + x, fused
}

void AttentionBlock::prepare(const ExecContext& ctx, const Shape& in) const {
  qkv_.prepare(ctx, in);
  proj_.prepare(ctx, in);
}

}  // namespace diffprobe::detail
