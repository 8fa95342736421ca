#include "model/layers/res_block.hpp"

#include "diffprobe/ops/elementwise.hpp"
#include "diffprobe/ops/group_norm.hpp"

namespace diffprobe::detail {

void ResBlock::weights(WeightTable& t) {
  in_norm_ = t.norm("in_layers.0", cin_);
  in_conv_ = t.conv("in_layers.2", cin_, cout_, 3);
  emb_ = t.linear("emb_layers.1", emb_dim_, scale_shift_ ? 2 * cout_ : cout_);
  out_norm_ = t.norm("out_layers.0", cout_);
  out_conv_ = t.conv("out_layers.3", cout_, cout_, 3);
  if (cin_ != cout_) skip_ = t.conv("skip_connection", cin_, cout_, 1);
}

std::string ResBlock::describe() const {
  const char* kind = resample_ == Resample::Down ? "-down" : resample_ == Resample::Up ? "-up" : "";
  return std::string("ResBlock") + kind + arrow(cin_, cout_);
}

Shape ResBlock::out_shape(const Shape& in, double& flops) const {
  const std::int64_t N = in[0];
  std::int64_t H = in[2], W = in[3];
  if (resample_ == Resample::Down) H /= 2, W /= 2;
  if (resample_ == Resample::Up) H *= 2, W *= 2;
  flops += conv_flops(N, cin_, cout_, H, W, 3) + conv_flops(N, cout_, cout_, H, W, 3);
  if (cin_ != cout_) flops += conv_flops(N, cin_, cout_, H, W, 1);
  return {N, cout_, H, W};
}

Tensor ResBlock::forward(Tensor x, const Tensor& emb, const ExecContext& ctx) const {
  ops::GroupNormArgs a;
  a.eps = kGroupNormEps;
  a.silu = true;
  a.avg_pool2x2 = resample_ == Resample::Down;  // ResBlock-down: pool(silu(GN(x))) in one pass
  Tensor h = ops::group_norm(x, in_norm_.gamma, in_norm_.beta, a, ctx);
  Tensor xs;
  if (resample_ == Resample::Down) {
    xs = ops::avg_pool2x2(x, ctx);
  } else if (resample_ == Resample::Up) {
    h = ops::upsample_nearest2x(h, ctx);
    xs = ops::upsample_nearest2x(x, ctx);
  } else {
    xs = std::move(x);
  }
  x = Tensor();
  h = in_conv_.forward(h, ctx);
  const Tensor e = emb_.forward(emb, ctx, /*silu_input=*/true);
  ops::GroupNormArgs b;
  b.eps = kGroupNormEps;
  b.silu = true;
  if (scale_shift_)
    b.scale_shift = e;
  else
    b.pre_bias = e;
  h = ops::group_norm(h, out_norm_.gamma, out_norm_.beta, b, ctx);
  if (skip_.defined()) xs = skip_.forward(xs, ctx);
  return out_conv_.forward_add(h, std::move(xs), ctx);  // skip(x) + out_layers(h), fused
}

void ResBlock::prepare(const ExecContext& ctx, const Shape& in) const {
  const Shape out = output_shape(in);
  const Shape resampled{in[0], cin_, out[2], out[3]};  // the convolutions run at the output size
  in_conv_.prepare(ctx, resampled);
  out_conv_.prepare(ctx, out);
  if (skip_.defined()) skip_.prepare(ctx, resampled);
  emb_.prepare(ctx);
}

}  // namespace diffprobe::detail
