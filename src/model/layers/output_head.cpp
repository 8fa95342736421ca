#include "model/layers/output_head.hpp"

#include "diffprobe/ops/group_norm.hpp"

namespace diffprobe::detail {

void OutputHead::weights(WeightTable& t) {
  norm_ = t.norm("0", cin_);
  conv_ = t.conv("2", cin_, cout_, 3);
}

Tensor OutputHead::forward(Tensor x, const Tensor&, const ExecContext& ctx) const {
  ops::GroupNormArgs a;
  a.eps = kGroupNormEps;
  a.silu = true;
  const Tensor n = ops::group_norm(x, norm_.gamma, norm_.beta, a, ctx);
  x = Tensor();
  return conv_.forward(n, ctx);
}

}  // namespace diffprobe::detail
