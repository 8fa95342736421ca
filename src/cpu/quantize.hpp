#pragma once
// The int8 convolution's own passes around oneDNN's s8 x s8 -> int32 kernel: the scale of each
// image's input (max |x| / 127), the input quantised to s8, and, for per-image scales (which a
// primitive cannot take: oneDNN 2.6 fixes its output scales when it is created), the output
// dequantised with its image's scale, the bias and the residual added. Each runs over a whole
// batch, parallel over fixed chunks, so results do not depend on the thread count.
#include <cstdint>
#include <vector>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::cpu {

/// The largest step of a symmetric s8 code: q in [-127, 127].
inline constexpr float kInt8Max = 127.0f;

/// max |x| over each image of an activation tensor [N, ...] (f32 or bf16, any layout; an image is
/// numel / N contiguous values). NaN propagates (a NaN image gives NaN).
std::vector<float> image_max_abs(const Tensor& x, int threads);

/// The per-image quantisation scale for a max |x|: max / 127, or 1 when the image is all zero.
inline float int8_scale_for(float max_abs) { return max_abs > 0.0f ? max_abs / kInt8Max : 1.0f; }

/// q = clamp(round_half_even(x / scale[n]), -127, 127) for every image n; q has x's element
/// order. scales: one per image (or one for all when of size 1).
void quantize_s8(const Tensor& x, std::int8_t* q, const std::vector<float>& scales, int threads);

/// y = acc * scale[n] + bias[o] (+ residual) for every image n: acc f32 in y's layout (NHWC or
/// NCHW), y f32 or bf16, residual (may be undefined) f32 or bf16 in y's layout, bias may be null.
void dequantize(const float* acc, const Tensor& y, const float* bias, const Tensor& residual,
                const std::vector<float>& scales, int threads);

}  // namespace diffprobe::cpu
