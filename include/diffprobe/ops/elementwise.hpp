#pragma once
// Small ops of the U-Net: activation, resampling, concatenation, pooling, timestep embedding.
// Image tensors are [N, C, H, W] in either layout, f32 or bf16; results keep the input's layout
// and are written in ctx.activations (arithmetic in fp32), except the adaptive pools and the
// timestep embedding, which write f32.
#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::ops {

/// x * sigmoid(x), elementwise, any shape.
Tensor silu(const Tensor& x, const ExecContext& ctx = {});
/// a + b, same shape and layout.
Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx = {});
/// 2x2 average pool, stride 2 (H and W must be even).
Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx = {});
/// Nearest-neighbour x2 upsampling.
Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx = {});
/// [a, b] along channels (a first), same N, H, W and layout.
Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx = {});
/// PyTorch's adaptive pooling to out_h x out_w: window i covers [floor(i*H/out), ceil((i+1)*H/out)).
Tensor adaptive_avg_pool2d(const Tensor& x, int out_h, int out_w, const ExecContext& ctx = {});
Tensor adaptive_max_pool2d(const Tensor& x, int out_h, int out_w, const ExecContext& ctx = {});
/// ADM's sinusoidal embedding of t (f32 [N]) -> f32 [N, dim]: [cos(t*f_i), sin(t*f_i)],
/// f_i = exp(-ln(10000) * i / (dim/2)), i < dim/2; a zero column appended when dim is odd.
Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx = {});

}  // namespace diffprobe::ops
