#pragma once
// The CPU backend's ops. Arguments arrive validated by the public front-ends (src/ops/ops.cpp).
// Convolution and linear go through oneDNN (onednn_*.cpp); norm, attention and the small ops
// are hand-written loops parallelised with OpenMP.
#include "ops/backend.hpp"

namespace diffprobe::cpu {
using ops::detail::OpCache;

/// into_residual: write y into the residual's buffer (the caller holds the only reference).
Tensor conv2d(const ops::Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
              const ExecContext& ctx, bool into_residual = false);
/// input: the shape the layer will run at, when known (selects the layout to pack).
void conv2d_prepare(const ops::Conv2d& op, OpCache& cache, const ExecContext& ctx,
                    const Shape* input = nullptr);
/// Whether conv2d runs this input as one matmul over an im2col copy (3x3 stride-1 convolutions
/// of small maps with many channels, fp32, NHWC) rather than as oneDNN's convolution.
bool conv2d_uses_im2col(const ops::Conv2d& op, const Shape& in, Layout layout, Precision p);
Tensor linear(const ops::Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
              const ExecContext& ctx);
void linear_prepare(const ops::Linear& op, OpCache& cache, const ExecContext& ctx);
Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const ops::GroupNormArgs& args,
                  const ExecContext& ctx);
Tensor attention(const Tensor& qkv, int heads, ops::QkvOrder order, const ExecContext& ctx);
Tensor silu(const Tensor& x, const ExecContext& ctx);
Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx);
Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx);
Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx);
Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx);
Tensor adaptive_pool2d(const Tensor& x, int out_h, int out_w, bool max, const ExecContext& ctx);
Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx);

/// The allocator ops take their outputs from.
inline Allocator* out_allocator(const ExecContext& ctx) { return ctx.allocator; }

}  // namespace diffprobe::cpu
