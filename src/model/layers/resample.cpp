#include "model/layers/resample.hpp"

#include "diffprobe/ops/elementwise.hpp"

namespace diffprobe::detail {

Tensor Upsample::forward(Tensor x, const Tensor&, const ExecContext& ctx) const {
  return conv_.forward(ops::upsample_nearest2x(x, ctx), ctx);
}

}  // namespace diffprobe::detail
