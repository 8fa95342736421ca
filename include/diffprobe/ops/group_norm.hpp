#pragma once
// GroupNorm fused with ADM's per-(sample, channel) modulation and SiLU, in one pass over memory:
//   h = x + pre_bias                          (ResBlock without scale-shift: GN(h + e))
//   y = GN(h) * gamma + beta                  (statistics in fp32 over each group of C/groups channels x H x
//   W) y = y * (1 + scale) + shift               (scale = scale_shift[:, :C], shift = scale_shift[:, C:]) y =
//   silu(y)                               (when silu)
#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::ops {

struct GroupNormArgs {
  int groups = 32;
  float eps = 1e-5f;
  Tensor pre_bias;     // optional f32 [N, C]
  Tensor scale_shift;  // optional f32 [N, 2C], scale first
  bool silu = false;
  /// Then a 2x2 average pool (ADM's ResBlock-down: pool(silu(GN(x)))), H and W even: the output
  /// is [N, C, H/2, W/2], the same numbers as group_norm followed by avg_pool2x2, without the
  /// full-size intermediate. Statistics are those of the full-size x.
  bool avg_pool2x2 = false;
};

/// x: f32 or bf16 [N, C, H, W] (NHWC or NCHW), C divisible by groups; gamma, beta: f32 [C].
/// Statistics and arithmetic in fp32 (double across blocks) whatever x's dtype. Returns a tensor
/// of x's shape (halved in H and W with avg_pool2x2) and layout, dtype ctx.activations.
Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const GroupNormArgs& args = {},
                  const ExecContext& ctx = {});

}  // namespace diffprobe::ops
