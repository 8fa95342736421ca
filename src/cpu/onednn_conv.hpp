#pragma once
// What the CPU's fp32/bf16 convolution (onednn_conv.cpp) and its int8 one (onednn_conv_int8.cpp)
// share: oneDNN descriptions of the operands.
#include <oneapi/dnnl/dnnl.hpp>

#include "cpu/cpu_ops.hpp"
#include "cpu/onednn_common.hpp"

namespace diffprobe::cpu::conv_detail {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using ConvPd = dnnl::convolution_forward::primitive_desc;

inline constexpr const char* kWhere = "Conv2d";

inline tag layout_tag(Layout l) { return l == Layout::NHWC ? tag::nhwc : tag::nchw; }

inline memory::dims dims4(const Shape& s) { return {s[0], s[1], s[2], s[3]}; }

/// The description of a rank-4 activation tensor (f32 or bf16, NHWC or NCHW) as it is in memory.
inline memory::desc activation_desc(const Tensor& t) {
  return memory::desc(dims4(t.shape()), onednn::data_type(t.dtype()), layout_tag(t.layout()));
}

/// The PyTorch-ordered f32 weights, read in place.
inline memory user_weights(const ops::Conv2d& op) {
  return memory({dims4(op.weight().shape()), dt::f32, tag::oihw}, onednn::engine(), op.weight().raw());
}

/// User scratchpad, and with `sum` the residual add: the residual is copied into dst first and
/// the primitive adds onto it.
inline dnnl::primitive_attr attr_with_sum(bool sum) {
  dnnl::primitive_attr attr = onednn::user_scratchpad_attr();
  if (sum) {
    dnnl::post_ops po;
    po.append_sum(1.0f);
    attr.set_post_ops(po);
  }
  return attr;
}

inline void require_cpu_weights(const ops::Conv2d& op, const char* where) {
  if (!op.weight().device().is_cpu())
    throw DeviceError(
        where, "the CPU backend needs the weights on the CPU, they are on " + op.weight().device().str());
}

/// The int8 convolution (ctx.precision INT8 and an int8 input mode other than Bf16).
Tensor conv2d_int8(const ops::Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
                   const ExecContext& ctx, bool into_residual, const ops::Int8Input& mode);
/// Packs its s8 weights (input: the shape it will run at, when known).
void conv2d_int8_prepare(const ops::Conv2d& op, OpCache& cache, const ExecContext& ctx, const Shape* input);

}  // namespace diffprobe::cpu::conv_detail
