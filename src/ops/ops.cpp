// Public op entry points: validate once, then dispatch to the device's backend.
#include <cmath>
#include <string>

#include "backend.hpp"
#include "validate.hpp"

namespace diffprobe::ops {
using namespace detail;

namespace {

void check_image(const Tensor& x, const char* where, const char* what = "input") {
  require_activation(x, where, what);
  require_rank(x, 4, where, what);
}

// The backend of an op on activations: it must run `op`, read every image operand's dtype and,
// when the op writes an activation, write ExecContext::activations.
Backend& activation_backend(Device dev, OpKind op, const ExecContext& ctx,
                            std::initializer_list<const Tensor*> operands, const char* where,
                            bool writes_activation = true) {
  Backend& b = backend_for(dev, op, where);
  const auto need = [&](DType d, const char* what) {
    if (!b.supports_activations(d))
      throw UnsupportedError(where, std::string("the ") + b.name() + " backend does not take " +
                                        std::string(dtype_name(d)) + " " + what);
  };
  if (writes_activation) {
    if (ctx.activations != DType::F32 && ctx.activations != DType::BF16)
      throw DTypeError(where, "ExecContext::activations must be f32 or bf16, got " +
                                  std::string(dtype_name(ctx.activations)));
    need(ctx.activations, "activations (ExecContext::activations)");
  }
  for (const Tensor* t : operands)
    if (t && t->defined()) need(t->dtype(), "operands");
  return b;
}

Device resolve_device(const Tensor& x, const ExecContext& ctx, const char* where) {
  if (!(ctx.device == x.device()))
    throw DeviceError(
        where, "the context asks for " + ctx.device.str() + " but the input is on " + x.device().str());
  return x.device();
}

}  // namespace

// ---- Conv2d ---------------------------------------------------------------------------------

Conv2d::Conv2d(Tensor weight, Tensor bias, Conv2dSpec spec)
    : weight_(std::move(weight)), bias_(std::move(bias)), spec_(spec), cache_(std::make_shared<OpCache>()) {
  require_f32(weight_, "Conv2d", "weight");
  require_rank(weight_, 4, "Conv2d", "weight");
  if (weight_.layout() != Layout::Contiguous)
    throw ShapeError("Conv2d", "weight must be in [O, I, kH, kW] order");
  if (weight_.shape()[2] != weight_.shape()[3] || weight_.shape()[2] % 2 == 0)
    throw ShapeError("Conv2d", "kernel must be square and odd, got " + weight_.shape().str());
  if (bias_.defined()) {
    require_f32(bias_, "Conv2d", "bias");
    require_shape(bias_, Shape{weight_.shape()[0]}, "Conv2d", "bias");
    require_same_device(weight_, bias_, "Conv2d", "bias");
  }
  if (spec_.stride < 1 || spec_.stride > 2)
    throw ArgumentError("Conv2d", "stride must be 1 or 2, got " + std::to_string(spec_.stride));
  if (spec_.padding < 0 || spec_.padding > weight_.shape()[2] / 2)
    throw ArgumentError("Conv2d", "padding " + std::to_string(spec_.padding) + " invalid for kernel " +
                                      std::to_string(weight_.shape()[2]));
}

Shape Conv2d::output_shape(const Shape& in) const {
  if (!defined()) throw ArgumentError("Conv2d", "the convolution is undefined");
  if (in.rank() != 4) throw ShapeError("Conv2d", "input must be [N, C, H, W], got " + in.str());
  if (in[1] != in_channels())
    throw ShapeError("Conv2d", "input has " + std::to_string(in[1]) + " channels, the weight expects " +
                                   std::to_string(in_channels()));
  const std::int64_t k = kernel_size(), s = spec_.stride, p = spec_.padding;
  const std::int64_t oh = (in[2] + 2 * p - k) / s + 1, ow = (in[3] + 2 * p - k) / s + 1;
  if (oh < 1 || ow < 1) throw ShapeError("Conv2d", "input " + in.str() + " is smaller than the kernel");
  return Shape{in[0], out_channels(), oh, ow};
}

double Conv2d::flops(const Shape& in) const {
  const Shape o = output_shape(in);
  return 2.0 * static_cast<double>(o.numel()) *
         static_cast<double>(in_channels() * kernel_size() * kernel_size());
}

Device Conv2d::check_operands(const Tensor& x, const Tensor& residual, const ExecContext& ctx) const {
  check_image(x, "Conv2d");
  const Shape out = output_shape(x.shape());
  const Device dev = resolve_device(x, ctx, "Conv2d");
  require_same_device(x, weight_, "Conv2d", "weight");
  if (residual.defined()) {
    require_activation(residual, "Conv2d", "residual");
    require_shape(residual, out, "Conv2d", "residual");
    require_same_device(x, residual, "Conv2d", "residual");
  }
  return dev;
}

const char* int8_mode_name(Int8Input::Mode mode) noexcept {
  switch (mode) {
    case Int8Input::Mode::PerImage: return "per-image";
    case Int8Input::Mode::Calibrated: return "calibrated";
    case Int8Input::Mode::Bf16: return "bf16";
  }
  return "?";
}

void Conv2d::set_int8_input(const Int8Input& input) const {
  if (!defined()) throw ArgumentError("Conv2d::set_int8_input", "the convolution is undefined");
  if (input.mode == Int8Input::Mode::Calibrated && !(input.scale >= 1e-30f && input.scale <= 1e30f))
    throw ArgumentError("Conv2d::set_int8_input",
                        "a calibrated scale must be in [1e-30, 1e30], got " + std::to_string(input.scale));
  Int8Input stored = input;
  if (stored.mode != Int8Input::Mode::Calibrated) stored.scale = 0.0f;
  cache_->int8_input.store(pack_int8(stored), std::memory_order_relaxed);
}

Int8Input Conv2d::int8_input() const {
  if (!defined()) return {};
  return unpack_int8(cache_->int8_input.load(std::memory_order_relaxed));
}

Tensor Conv2d::forward(const Tensor& x, const ExecContext& ctx) const {
  const Device dev = check_operands(x, Tensor(), ctx);
  if (ConvInputObserver* o = cache_->observer.load(std::memory_order_acquire)) o->observe(*this, x);
  return activation_backend(dev, OpKind::Conv2d, ctx, {&x}, "Conv2d")
      .conv2d(*this, *cache_, x, Tensor(), ctx);
}

Tensor Conv2d::forward_add(const Tensor& x, Tensor residual, const ExecContext& ctx) const {
  const Device dev = check_operands(x, residual, ctx);
  if (ConvInputObserver* o = cache_->observer.load(std::memory_order_acquire)) o->observe(*this, x);
  // Only this call holds the storage, which is the library's own memory (not a view of the
  // caller's), and the output has the residual's layout: then its buffer becomes the output.
  Backend& backend = activation_backend(dev, OpKind::Conv2d, ctx, {&x, &residual}, "Conv2d");
  const bool sole = residual.defined() && residual.storage().use_count() == 1 &&
                    residual.storage()->owns_memory() && residual.layout() == x.layout() &&
                    residual.dtype() == ctx.activations;
  if (!sole) return backend.conv2d(*this, *cache_, x, residual, ctx);
  return backend.conv2d_into_residual(*this, *cache_, x, std::move(residual), ctx);
}

void Conv2d::prepare(const ExecContext& ctx) const {
  if (!defined()) throw ArgumentError("Conv2d::prepare", "the convolution is undefined");
  backend_for(ctx.device, OpKind::Conv2d, "Conv2d::prepare").conv2d_prepare(*this, *cache_, ctx);
}

void Conv2d::prepare(const ExecContext& ctx, const Shape& input) const {
  if (!defined()) throw ArgumentError("Conv2d::prepare", "the convolution is undefined");
  (void)output_shape(input);  // ShapeError when input is not [N, in_channels, H, W] or too small
  backend_for(ctx.device, OpKind::Conv2d, "Conv2d::prepare").conv2d_prepare_for(*this, *cache_, ctx, input);
}

// ---- Linear ---------------------------------------------------------------------------------

Linear::Linear(Tensor weight, Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)), cache_(std::make_shared<OpCache>()) {
  require_f32(weight_, "Linear", "weight");
  require_rank(weight_, 2, "Linear", "weight");
  if (bias_.defined()) {
    require_f32(bias_, "Linear", "bias");
    require_shape(bias_, Shape{weight_.shape()[0]}, "Linear", "bias");
    require_same_device(weight_, bias_, "Linear", "bias");
  }
}

Tensor Linear::forward(const Tensor& x, const ExecContext& ctx, bool silu_input) const {
  if (!defined()) throw ArgumentError("Linear", "the layer is undefined");
  require_f32(x, "Linear", "input");
  require_rank(x, 2, "Linear", "input");
  if (x.shape()[1] != in_features())
    throw ShapeError("Linear", "input has " + std::to_string(x.shape()[1]) +
                                   " features, the weight expects " + std::to_string(in_features()));
  const Device dev = resolve_device(x, ctx, "Linear");
  require_same_device(x, weight_, "Linear", "weight");
  return backend_for(dev, OpKind::Linear, "Linear").linear(*this, *cache_, x, silu_input, ctx);
}

void Linear::prepare(const ExecContext& ctx) const {
  if (!defined()) throw ArgumentError("Linear::prepare", "the layer is undefined");
  backend_for(ctx.device, OpKind::Linear, "Linear::prepare").linear_prepare(*this, *cache_, ctx);
}

// ---- GroupNorm ------------------------------------------------------------------------------

Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const GroupNormArgs& args,
                  const ExecContext& ctx) {
  constexpr const char* where = "group_norm";
  check_image(x, where);
  const std::int64_t N = x.shape()[0], C = x.shape()[1];
  if (args.groups < 1 || C % args.groups != 0)
    throw ShapeError(where, std::to_string(C) + " channels cannot be split into " +
                                std::to_string(args.groups) + " groups");
  if (!(args.eps > 0.0f) || !std::isfinite(args.eps))
    throw ArgumentError(where, "eps must be positive and finite");
  require_f32(gamma, where, "gamma");
  require_f32(beta, where, "beta");
  require_shape(gamma, Shape{C}, where, "gamma");
  require_shape(beta, Shape{C}, where, "beta");
  require_same_device(x, gamma, where, "gamma");
  require_same_device(x, beta, where, "beta");
  if (args.pre_bias.defined()) {
    require_f32(args.pre_bias, where, "pre_bias");
    require_shape(args.pre_bias, Shape{N, C}, where, "pre_bias");
    require_same_device(x, args.pre_bias, where, "pre_bias");
  }
  if (args.scale_shift.defined()) {
    require_f32(args.scale_shift, where, "scale_shift");
    require_shape(args.scale_shift, Shape{N, 2 * C}, where, "scale_shift");
    require_same_device(x, args.scale_shift, where, "scale_shift");
  }
  if (args.avg_pool2x2 && (x.shape()[2] % 2 != 0 || x.shape()[3] % 2 != 0))
    throw ShapeError(where, "avg_pool2x2 needs even H and W, got " + x.shape().str());
  const Device dev = resolve_device(x, ctx, where);
  Backend& backend = activation_backend(dev, OpKind::GroupNorm, ctx, {&x}, where);
  if (args.avg_pool2x2 && !backend.supports(OpKind::GroupNormAvgPool)) {  // then the two ops
    GroupNormArgs plain = args;
    plain.avg_pool2x2 = false;
    return avg_pool2x2(backend.group_norm(x, gamma, beta, plain, ctx), ctx);
  }
  return backend.group_norm(x, gamma, beta, args, ctx);
}

// ---- Attention ------------------------------------------------------------------------------

Tensor attention(const Tensor& qkv, int heads, QkvOrder order, const ExecContext& ctx) {
  constexpr const char* where = "attention";
  check_image(qkv, where, "qkv");
  const std::int64_t C3 = qkv.shape()[1];
  if (C3 % 3 != 0) throw ShapeError(where, "qkv must have 3*C channels, got " + std::to_string(C3));
  if (heads < 1 || (C3 / 3) % heads != 0)
    throw ShapeError(
        where, std::to_string(C3 / 3) + " channels cannot be split into " + std::to_string(heads) + " heads");
  const Device dev = resolve_device(qkv, ctx, where);
  return activation_backend(dev, OpKind::Attention, ctx, {&qkv}, where).attention(qkv, heads, order, ctx);
}

double attention_flops(const Shape& s, int heads) {
  (void)heads;  // total work does not depend on the head split
  const double T = static_cast<double>(s[2] * s[3]), C = static_cast<double>(s[1] / 3);
  return 2.0 * 2.0 * static_cast<double>(s[0]) * T * T * C;
}

// ---- Small ops ------------------------------------------------------------------------------

Tensor silu(const Tensor& x, const ExecContext& ctx) {
  require_activation(x, "silu", "input");
  return activation_backend(resolve_device(x, ctx, "silu"), OpKind::Silu, ctx, {&x}, "silu").silu(x, ctx);
}

Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx) {
  require_activation(a, "add", "a");
  require_activation(b, "add", "b");
  require_shape(b, a.shape(), "add", "b");
  if (a.layout() != b.layout())
    throw ShapeError(
        "add", std::string("layouts differ: ") + layout_name(a.layout()) + " vs " + layout_name(b.layout()));
  require_same_device(a, b, "add", "b");
  return activation_backend(resolve_device(a, ctx, "add"), OpKind::Add, ctx, {&a, &b}, "add").add(a, b, ctx);
}

Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx) {
  check_image(x, "avg_pool2x2");
  if (x.shape()[2] % 2 || x.shape()[3] % 2)
    throw ShapeError("avg_pool2x2", "H and W must be even, got " + x.shape().str());
  return activation_backend(resolve_device(x, ctx, "avg_pool2x2"), OpKind::AvgPool2x2, ctx, {&x},
                            "avg_pool2x2")
      .avg_pool2x2(x, ctx);
}

Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx) {
  check_image(x, "upsample_nearest2x");
  return activation_backend(resolve_device(x, ctx, "upsample_nearest2x"), OpKind::UpsampleNearest2x, ctx,
                            {&x}, "upsample_nearest2x")
      .upsample_nearest2x(x, ctx);
}

Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx) {
  check_image(a, "concat_channels", "a");
  check_image(b, "concat_channels", "b");
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  if (sa[0] != sb[0] || sa[2] != sb[2] || sa[3] != sb[3])
    throw ShapeError("concat_channels", "N, H, W must agree: " + sa.str() + " vs " + sb.str());
  if (a.layout() != b.layout()) throw ShapeError("concat_channels", "the two inputs have different layouts");
  require_same_device(a, b, "concat_channels", "b");
  return activation_backend(resolve_device(a, ctx, "concat_channels"), OpKind::ConcatChannels, ctx, {&a, &b},
                            "concat_channels")
      .concat_channels(a, b, ctx);
}

static Tensor adaptive(const Tensor& x, int oh, int ow, bool max, const ExecContext& ctx) {
  const char* where = max ? "adaptive_max_pool2d" : "adaptive_avg_pool2d";
  check_image(x, where);
  if (oh < 1 || ow < 1 || oh > x.shape()[2] || ow > x.shape()[3])
    throw ArgumentError(where, "output size " + std::to_string(oh) + "x" + std::to_string(ow) +
                                   " must be within 1.." + std::to_string(x.shape()[2]) + "x" +
                                   std::to_string(x.shape()[3]));
  return activation_backend(resolve_device(x, ctx, where), OpKind::AdaptivePool2d, ctx, {&x}, where,
                            /*writes_activation=*/false)
      .adaptive_pool2d(x, oh, ow, max, ctx);
}

Tensor adaptive_avg_pool2d(const Tensor& x, int oh, int ow, const ExecContext& ctx) {
  return adaptive(x, oh, ow, false, ctx);
}
Tensor adaptive_max_pool2d(const Tensor& x, int oh, int ow, const ExecContext& ctx) {
  return adaptive(x, oh, ow, true, ctx);
}

Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx) {
  require_f32(t, "timestep_embedding", "t");
  require_rank(t, 1, "timestep_embedding", "t");
  if (dim < 1) throw ArgumentError("timestep_embedding", "dim must be >= 1, got " + std::to_string(dim));
  return backend_for(resolve_device(t, ctx, "timestep_embedding"), OpKind::TimestepEmbedding,
                     "timestep_embedding")
      .timestep_embedding(t, dim, ctx);
}

}  // namespace diffprobe::ops
