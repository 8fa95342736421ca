// The CPU's int8 convolution: oneDNN's s8 x s8 -> int32 kernels (VNNI), with
//   - weights quantised once per output channel o: w ~ s_w[o] * qw, s_w[o] = max |w_o| / 127;
//   - the input quantised to s8 by our own pass (quantize.hpp) with one scale per image (found at
//     run time: max |x_n| / 127) or one calibrated scale s_x for every image (Int8Input);
//   - a calibrated scale fixed in the primitive: output scales s_x * s_w[o], the bias divided by
//     them (oneDNN 2.x adds the bias before scaling: dst = scale * (acc + bias)), the residual
//     through the sum post-op, the output written in the activation dtype directly;
//   - per-image scales, which oneDNN 2.6's brgemm kernels cannot take at run time ("could not
//     create a primitive descriptor" for runtime output scales): the primitive applies s_w[o]
//     into an f32 buffer, and one more pass (dequantize) multiplies by the image's scale and adds
//     the bias and the residual.
// A per-image scale makes each image's features independent of the batch it comes in, as a
// per-batch scale would not.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <unordered_map>

#include "cpu/onednn_conv.hpp"
#include "cpu/quantize.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu::conv_detail {
namespace {

using Mode = ops::Int8Input::Mode;

// The weights' per-channel scales and their s8 packings (one per layout a primitive asked for).
struct Int8Weights {
  std::vector<float> scale;  // s_w[o]
  std::shared_ptr<onednn::PackedWeights> packed;
};

std::shared_ptr<Int8Weights> int8_weights(const ops::Conv2d& op, OpCache& cache) {
  return cache.get_or_create<Int8Weights>("conv.int8.weights", [&] {
    auto w = std::make_shared<Int8Weights>();
    const std::int64_t O = op.out_channels(), per = op.weight().numel() / O;
    const float* p = op.weight().data<const float>();
    std::vector<float> inv(static_cast<std::size_t>(O));
    w->scale.resize(static_cast<std::size_t>(O));
    for (std::int64_t o = 0; o < O; ++o) {
      float m = 0.0f;
      for (std::int64_t i = 0; i < per; ++i) m = std::max(m, std::fabs(p[o * per + i]));
      const float s = int8_scale_for(m);
      w->scale[static_cast<std::size_t>(o)] = s;
      inv[static_cast<std::size_t>(o)] = 1.0f / s;
    }
    w->packed = std::make_shared<onednn::PackedWeights>(std::move(inv));
    return w;
  });
}

struct Int8Plan {
  dnnl::primitive compute;
  memory weights;
  memory::desc src, dst, bias, scratchpad, residual;
  std::vector<float> bias_scaled;  // calibrated: bias / (s_x * s_w[o])
  std::optional<onednn::WithScratch<dnnl::reorder>> copy_residual;
  std::size_t scratch_bytes = 0;
};

// Calibrated: dst in the activation dtype, output scales s_x * s_w, bias (scaled), sum post-op
// for a residual. Per image: f32 dst, output scales s_w, no bias, no sum.
ConvPd make_int8_pd(const ops::Conv2d& op, const Shape& in, Layout layout, bool calibrated, bool sum,
                    DType out_type, const std::vector<float>& out_scales, const memory::desc& weights) {
  const Shape out = op.output_shape(in);
  const memory::dim s = op.spec().stride, pad = op.spec().padding;
  const memory::desc src(dims4(in), dt::s8, layout_tag(layout));
  const memory::desc dst(dims4(out), calibrated ? onednn::data_type(out_type) : dt::f32, layout_tag(layout));
  dnnl::primitive_attr attr = attr_with_sum(calibrated && sum);
  attr.set_output_scales(1 << 1, out_scales);
  constexpr auto kind = dnnl::prop_kind::forward_inference;
  constexpr auto alg = dnnl::algorithm::convolution_direct;
  if (calibrated && op.bias().defined()) {
    const memory::desc bias({op.out_channels()}, dt::f32, tag::x);
    return ConvPd({kind, alg, src, weights, bias, dst, {s, s}, {pad, pad}, {pad, pad}}, attr,
                  onednn::engine());
  }
  return ConvPd({kind, alg, src, weights, dst, {s, s}, {pad, pad}, {pad, pad}}, attr, onednn::engine());
}

memory::desc any_s8_weights(const ops::Conv2d& op) {
  const memory::dim k = op.kernel_size();
  return memory::desc({op.out_channels(), op.in_channels(), k, k}, dt::s8, tag::any);
}

std::shared_ptr<Int8Plan> make_int8_plan(const ops::Conv2d& op, Int8Weights& w, const Shape& in,
                                         Layout layout, const Tensor& residual, DType out_type,
                                         const ops::Int8Input& mode) {
  auto plan = std::make_shared<Int8Plan>();
  const bool calibrated = mode.mode == Mode::Calibrated;
  std::vector<float> out_scales = w.scale;
  if (calibrated)
    for (float& s : out_scales) s *= mode.scale;
  const ConvPd pd =
      onednn::create_preferring_packed<ConvPd>(*w.packed, any_s8_weights(op), [&](const memory::desc& d) {
        return make_int8_pd(op, in, layout, calibrated, residual.defined(), out_type, out_scales, d);
      });
  plan->compute = dnnl::convolution_forward(pd);
  plan->weights = w.packed->get(pd.weights_desc(), user_weights(op));
  plan->src = pd.src_desc();
  plan->dst = pd.dst_desc();
  plan->scratchpad = pd.scratchpad_desc();
  plan->scratch_bytes = plan->scratchpad.get_size();
  if (calibrated && op.bias().defined()) {
    plan->bias = pd.bias_desc();
    const float* b = op.bias().data<const float>();
    plan->bias_scaled.resize(out_scales.size());
    for (std::size_t o = 0; o < out_scales.size(); ++o) plan->bias_scaled[o] = b[o] / out_scales[o];
  }
  if (calibrated && residual.defined()) {
    plan->residual = activation_desc(residual);
    plan->copy_residual = onednn::make_reorder(plan->residual, plan->dst);
    plan->scratch_bytes = std::max(plan->scratch_bytes, plan->copy_residual->scratchpad.get_size());
  }
  return plan;
}

// Bytes from the context's allocator (a tensor of floats holding them).
Tensor byte_buffer(std::size_t bytes, Allocator* alloc) {
  return Tensor::empty(Shape{static_cast<std::int64_t>((bytes + 3) / 4)}, DType::F32, Layout::Contiguous,
                       Device::cpu(), alloc);
}

std::string mode_key(const ops::Int8Input& mode) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &mode.scale, sizeof bits);
  return mode.mode == Mode::Calibrated ? fmt::format("cal{:08x}", bits) : std::string("img");
}

}  // namespace

Tensor conv2d_int8(const ops::Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
                   const ExecContext& ctx, bool into_residual, const ops::Int8Input& mode) {
  require_cpu_weights(op, kWhere);
  const ThreadScope scope(ctx.threads);
  const int threads = scope.threads();
  const Shape& in = x.shape();
  const Shape out = op.output_shape(in);
  const bool calibrated = mode.mode == Mode::Calibrated;
  const std::string key =
      fmt::format("conv.int8.plan.{}.t{}.{}x{}x{}x{}.{}.{}.res-{}-{}", mode_key(mode), threads, in[0], in[1],
                  in[2], in[3], layout_name(x.layout()), dtype_name(ctx.activations),
                  residual.defined() ? layout_name(residual.layout()) : "none",
                  residual.defined() ? dtype_name(residual.dtype()) : "");
  std::shared_ptr<Int8Plan> plan;
  std::shared_ptr<Int8Weights> weights;
  try {
    weights = int8_weights(op, cache);  // (before the plan: get_or_create holds the cache's lock)
    plan = cache.get_or_create<Int8Plan>(
        key, [&] { return make_int8_plan(op, *weights, in, x.layout(), residual, ctx.activations, mode); });
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, kWhere,
                    fmt::format("no int8 convolution for input {} ({})", in.str(), layout_name(x.layout())));
  }

  // The input's scales: one per image, or the calibrated one for all.
  std::vector<float> scales;
  if (calibrated) {
    scales.assign(1, mode.scale);
  } else {
    scales = image_max_abs(x, threads);
    for (std::size_t n = 0; n < scales.size(); ++n) {
      if (!std::isfinite(scales[n]))
        throw NumericError(kWhere,
                           "int8: image " + std::to_string(n) + " of the input holds a non-finite value");
      scales[n] = int8_scale_for(scales[n]);
    }
  }
  const Tensor q = byte_buffer(static_cast<std::size_t>(x.numel()), ctx.allocator);
  quantize_s8(x, static_cast<std::int8_t*>(q.raw()), scales, threads);

  // In place: the residual's buffer becomes y (read before it is written, element by element, in
  // both the sum post-op and dequantize).
  const bool in_place =
      into_residual && residual.dtype() == ctx.activations && residual.layout() == x.layout();
  Tensor y =
      in_place ? residual : Tensor::empty(out, ctx.activations, x.layout(), Device::cpu(), ctx.allocator);
  try {
    const dnnl::engine& eng = onednn::engine();
    dnnl::stream& s = onednn::stream();
    const onednn::Scratch scratch(plan->scratch_bytes, ctx.allocator);
    Tensor acc;  // per image: the primitive's f32 output, s_w[o] * the int32 sums
    void* dst = y.raw();
    if (!calibrated) {
      acc = Tensor::empty(out, DType::F32, x.layout(), Device::cpu(), ctx.allocator);
      dst = acc.raw();
    } else if (plan->copy_residual && !in_place) {
      onednn::execute(*plan->copy_residual, memory(plan->residual, eng, residual.raw()),
                      memory(plan->dst, eng, y.raw()), scratch);
    }
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(plan->src, eng, q.raw())},
                                         {DNNL_ARG_WEIGHTS, plan->weights},
                                         {DNNL_ARG_DST, memory(plan->dst, eng, dst)}};
    if (!plan->bias_scaled.empty())
      args.emplace(DNNL_ARG_BIAS, memory(plan->bias, eng, const_cast<float*>(plan->bias_scaled.data())));
    scratch.bind(args, plan->scratchpad);
    plan->compute.execute(s, args);
    s.wait();
    if (!calibrated)
      dequantize(acc.data<const float>(), y, op.bias().defined() ? op.bias().data<const float>() : nullptr,
                 residual, scales, threads);
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, kWhere, "running the int8 convolution on input " + in.str());
  }
  return y;
}

void conv2d_int8_prepare(const ops::Conv2d& op, OpCache& cache, const ExecContext& ctx, const Shape* input) {
  constexpr const char* where = "Conv2d::prepare";
  require_cpu_weights(op, where);
  const ThreadScope scope(ctx.threads);
  try {
    const auto w = int8_weights(op, cache);
    if (w->packed->count() > 0) return;
    const std::int64_t side = std::max<std::int64_t>(32, op.kernel_size());
    const Shape in = input ? *input : Shape{1, op.in_channels(), side, side};
    const ConvPd pd =
        make_int8_pd(op, in, Layout::NHWC, false, false, ctx.activations, w->scale, any_s8_weights(op));
    w->packed->prepack(pd.weights_desc(), user_weights(op));
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, where, "cannot pack the int8 weights");
  }
}

}  // namespace diffprobe::cpu::conv_detail
