#pragma once
// 2-D convolution (3x3 pad 1 stride 1/2, 1x1) with bias and an optional fused residual add.
// Describe once, run many times: the backend prepares the weights (reordered for the device
// and precision) and its primitives per input shape on first use, then reuses them.
#include <cstdint>
#include <memory>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::ops {

struct Conv2dSpec {
  int stride = 1;
  int padding = 1;
};

namespace detail {
struct OpCache;     // backend-private prepared state (weights, primitives), keyed by device/precision/shape
struct ConvAccess;  // the library's access to a convolution's shared state (calibration)
}  // namespace detail

/// How a convolution quantises its input to s8 in the int8 precision (ExecContext::precision
/// INT8): q = round(x / scale) clamped to [-127, 127], so that x ~ scale * q.
struct Int8Input {
  enum class Mode : std::uint8_t {
    PerImage,    // each image's own scale, max|x| / 127 over that image, found at run time (default)
    Calibrated,  // `scale` for every image, fixed (from calibration data: UNet::calibrate_int8)
    Bf16,        // not quantised: this convolution runs in bf16 (the U-Net's first and last)
  };
  Mode mode = Mode::PerImage;
  float scale = 0;  // Calibrated only: in [1e-30, 1e30]
};
const char* int8_mode_name(Int8Input::Mode mode) noexcept;

class Conv2d {
 public:
  Conv2d() = default;
  /// weight: f32 [O, I, k, k] (PyTorch order); bias: f32 [O] or undefined. k is 1 or 3 (any odd k
  /// works on the CPU). Throws ShapeError / DTypeError on bad weights.
  Conv2d(Tensor weight, Tensor bias, Conv2dSpec spec = {});

  /// y = conv(x) + bias. x: f32 or bf16 [N, I, H, W] (NHWC preferred; NCHW accepted). y has x's
  /// layout and dtype ctx.activations (bf16 activations need a reduced precision: oneDNN's fp32
  /// convolutions write f32 only, UnsupportedError otherwise), on x's device.
  Tensor forward(const Tensor& x, const ExecContext& ctx = {}) const;
  /// y = conv(x) + bias + residual (residual: undefined or y's shape, f32 or bf16), the sum
  /// fused. Given up with std::move, a residual that no other tensor shares and that is in y's
  /// layout and dtype becomes y's buffer, which saves a full copy of it (N x C x H x W x 4 bytes per call); a
  /// residual still held elsewhere is only read.
  Tensor forward_add(const Tensor& x, Tensor residual, const ExecContext& ctx = {}) const;

  /// Output shape for an input shape (throws ShapeError when the channels disagree).
  Shape output_shape(const Shape& in) const;
  /// 2 * multiply-adds for an input shape.
  double flops(const Shape& in) const;
  /// Prepares weights for a device and precision now (e.g. at model load) rather than at first use.
  void prepare(const ExecContext& ctx) const;
  /// The same for inputs of this shape (NHWC): packs the weights in the layout that shape's
  /// computation takes (on the CPU, small maps with many channels run as a matmul, which wants
  /// another layout than the convolution). Other shapes still work, packing on first use if
  /// they need another layout. ShapeError when the channels disagree with the weights.
  void prepare(const ExecContext& ctx, const Shape& input) const;

  /// The int8 quantisation of the input. Copies of a convolution share it, as they share the
  /// prepared weights; set it before forwards run (it is read once per call). ArgumentError for
  /// a Calibrated scale outside [1e-30, 1e30], or an undefined convolution.
  void set_int8_input(const Int8Input& input) const;
  Int8Input int8_input() const;

  bool defined() const noexcept { return weight_.defined(); }
  const Tensor& weight() const noexcept { return weight_; }
  const Tensor& bias() const noexcept { return bias_; }
  const Conv2dSpec& spec() const noexcept { return spec_; }
  std::int64_t in_channels() const noexcept { return weight_.defined() ? weight_.shape()[1] : 0; }
  std::int64_t out_channels() const noexcept { return weight_.defined() ? weight_.shape()[0] : 0; }
  std::int64_t kernel_size() const noexcept { return weight_.defined() ? weight_.shape()[2] : 0; }

 private:
  // Validates x and the residual (if defined) against the weights; the device to run on.
  Device check_operands(const Tensor& x, const Tensor& residual, const ExecContext& ctx) const;

  friend struct detail::ConvAccess;
  Tensor weight_, bias_;
  Conv2dSpec spec_;
  std::shared_ptr<detail::OpCache> cache_;
};

}  // namespace diffprobe::ops
