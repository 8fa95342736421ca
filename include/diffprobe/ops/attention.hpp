#pragma once
// Multi-head self-attention over the H*W tokens of an image, reading q, k, v straight from the
// output of ADM's qkv projection (a 1x1 conv C -> 3C), in either channel order:
//   Legacy: channel o of qkv belongs to head o / (3d), role (o mod 3d) / d  (q, k, v)
//   Split:  qkv = [q (C) | k (C) | v (C)], each split into heads of d channels ("new order")
// logits = q.k / sqrt(d); softmax over keys in fp32; output head h -> channels [h*d, (h+1)*d).
#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::ops {

enum class QkvOrder { Legacy, Split };

/// qkv: f32 or bf16 [N, 3C, H, W] (NHWC or NCHW), C divisible by heads. Returns [N, C, H, W]
/// in qkv's layout, dtype ctx.activations. Token order is row-major over (H, W), as in ADM's
/// reshape.
Tensor attention(const Tensor& qkv, int heads, QkvOrder order, const ExecContext& ctx = {});

/// 2 * multiply-adds of the two attention matmuls (not the projections).
double attention_flops(const Shape& qkv_shape, int heads);

}  // namespace diffprobe::ops
