#pragma once
// Launchers of the hand-written CUDA kernels (elementwise.cu, group_norm.cu, attention.cu).
// Plain C++ declarations: the host code (compiled by the C++ compiler) calls these; only the .cu
// files see device code. Every launcher enqueues on `stream` and returns at once; launch errors
// come back as the cudaError_t of cudaGetLastError().
#include <cuda_runtime_api.h>

#include <cstdint>

namespace diffprobe::cuda::kern {

using i64 = std::int64_t;

/// Element type of a buffer the kernels read or write.
enum class Elem : int { F32 = 0, F16 = 1, BF16 = 2 };

// ---- elementwise.cu ---------------------------------------------------------------------------
cudaError_t silu(const float* x, float* y, i64 n, cudaStream_t s);
cudaError_t add(const float* a, const float* b, float* y, i64 n, cudaStream_t s);
/// y = convert(x) (optionally silu(x) first); dst element type `to`.
cudaError_t cast_from_f32(const float* x, void* y, Elem to, i64 n, bool silu_first, cudaStream_t s);
cudaError_t avg_pool2x2(const float* x, float* y, i64 N, i64 C, i64 H, i64 W, bool nhwc, cudaStream_t s);
cudaError_t upsample_nearest2x(const float* x, float* y, i64 N, i64 C, i64 H, i64 W, bool nhwc,
                               cudaStream_t s);
/// NHWC channel concatenation (NCHW goes through cudaMemcpy2DAsync).
cudaError_t concat_channels_nhwc(const float* a, const float* b, float* y, i64 pixels, i64 Ca, i64 Cb,
                                 cudaStream_t s);
cudaError_t adaptive_pool2d(const float* x, float* y, i64 N, i64 C, i64 H, i64 W, i64 OH, i64 OW, bool nhwc,
                            bool max, cudaStream_t s);
/// freq: dim/2 fp32 frequencies (computed on the host exactly as the CPU backend does).
cudaError_t timestep_embedding(const float* t, const float* freq, float* y, i64 N, i64 dim, cudaStream_t s);
/// Reorders an f32 [O, I, k, k] weight to [O, k, k, I] (nhwc) or keeps [O, I, k, k], converting to `to`.
cudaError_t reorder_weight(const float* w, void* dst, Elem to, i64 O, i64 I, i64 k, bool nhwc,
                           cudaStream_t s);
/// y = float(conv) + bias[c] + residual, over an [N, C, H, W] tensor (bias, residual may be null).
/// conv may alias y when its element type is F32.
cudaError_t conv_epilogue(const void* conv, Elem conv_type, const float* bias, const float* residual,
                          float* y, i64 N, i64 C, i64 HW, bool nhwc, cudaStream_t s);
/// y [rows, O] = f(x) [rows, I] W^T + bias, W [O, I] of element type w_type (F16 / BF16 also round
/// the inputs to that type, as a 16-bit GEMM would); f = SiLU when silu_input; fp32 accumulation.
cudaError_t linear(const float* x, const void* w, Elem w_type, const float* bias, float* y, i64 rows, i64 I,
                   i64 O, bool silu_input, cudaStream_t s);

// ---- group_norm.cu ----------------------------------------------------------------------------
struct GroupNormArgs {
  const float* x;
  float* y;
  const float* gamma;
  const float* beta;
  const float* pre_bias;     // [N, C] or null
  const float* scale_shift;  // [N, 2C] or null
  i64 N, C, HW;
  int groups;
  float eps;
  bool silu, nhwc;
};
/// Bytes of scratch memory group_norm needs for a shape.
std::size_t group_norm_workspace(i64 N, i64 C, i64 HW, bool nhwc);
cudaError_t group_norm(const GroupNormArgs& a, void* workspace, cudaStream_t s);

// ---- attention.cu -----------------------------------------------------------------------------
struct AttentionArgs {
  const float* qkv;  // [N, 3C, H, W]
  float* out;        // [N, C, H, W], same layout
  i64 N, C, T;
  int heads;
  bool nhwc, legacy;
};
/// Largest head size the flash kernel handles.
inline constexpr i64 kMaxHeadDim = 256;
cudaError_t attention(const AttentionArgs& a, cudaStream_t s);

}  // namespace diffprobe::cuda::kern
