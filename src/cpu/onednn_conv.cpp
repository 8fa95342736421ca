// CPU convolution through oneDNN, "describe once, create once, execute many": the op's cache
// keeps its weights packed once per precision (in the blocked layout the primitive chose) and
// one ready primitive per (input shape, layout, residual, precision, thread count), so a call
// on a known shape creates no descriptor and packs nothing. 3x3 convolutions of small maps with
// many channels run as one matmul over an im2col copy instead (conv2d_uses_im2col).
#include "cpu/onednn_conv.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <unordered_map>
#include <vector>

#include "cpu/cpu_ops.hpp"
#include "cpu/onednn_common.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu {
namespace {

using namespace conv_detail;
using MatmulPd = dnnl::matmul::primitive_desc;

std::shared_ptr<onednn::PackedWeights> packed_weights(OpCache& cache, Precision p) {
  return cache.get_or_create<onednn::PackedWeights>(fmt::format("conv.weights.{}", precision_name(p)),
                                                    [] { return std::make_shared<onednn::PackedWeights>(); });
}

memory::desc any_weights(const ops::Conv2d& op, Precision p) {
  const memory::dim k = op.kernel_size();
  return memory::desc({op.out_channels(), op.in_channels(), k, k}, onednn::compute_type(p), tag::any);
}

// Activations stay in the caller's layout (NHWC: oneDNN's fast brgemm path; NCHW: its gemm
// path), so no activation reorders are needed besides the bf16 conversion of the input.
ConvPd make_pd(const ops::Conv2d& op, const Shape& in, Layout layout, bool sum, Precision p,
               const memory::desc& weights, dt dst_type = dt::f32) {
  const Shape out = op.output_shape(in);
  const memory::dim s = op.spec().stride, pad = op.spec().padding;
  const memory::desc src(dims4(in), onednn::compute_type(p), layout_tag(layout));
  const memory::desc dst(dims4(out), dst_type, layout_tag(layout));
  const dnnl::primitive_attr attr = attr_with_sum(sum);
  constexpr auto kind = dnnl::prop_kind::forward_inference;
  constexpr auto alg = dnnl::algorithm::convolution_direct;
  if (op.bias().defined()) {
    const memory::desc bias({op.out_channels()}, dt::f32, tag::x);
    return ConvPd({kind, alg, src, weights, bias, dst, {s, s}, {pad, pad}, {pad, pad}}, attr,
                  onednn::engine());
  }
  return ConvPd({kind, alg, src, weights, dst, {s, s}, {pad, pad}, {pad, pad}}, attr, onednn::engine());
}

// The im2col path: x [N, H, W, C] (NHWC) -> col [N*H*W, 9*C], each row the 3x3 neighbourhood of
// one output pixel in (kh, kw, c) order, zeros outside the image; y = col x W [9*C, O] + bias,
// one matmul of H*W rows per image: a GEMM library picks its kernel and reduction split by the
// row count (oneDNN 2.6's AVX2 sgemm gives other low bits for 512 rows than for 64), and an
// image's features must not depend on the batch it came in.
MatmulPd make_im2col_pd(const ops::Conv2d& op, const Shape& in, bool sum) {
  const memory::dim M = in[2] * in[3], K = 9 * in[1], O = op.out_channels();
  const dnnl::primitive_attr attr = attr_with_sum(sum);
  const memory::desc src({M, K}, dt::f32, tag::ab), dst({M, O}, dt::f32, tag::ab),
      weights({K, O}, dt::f32, tag::any);
  if (op.bias().defined())
    return MatmulPd({src, weights, memory::desc({1, O}, dt::f32, tag::ab), dst}, attr, onednn::engine());
  return MatmulPd({src, weights, dst}, attr, onednn::engine());
}

// The weights as the matmul's [9*C, O] operand in layout `want`, packed once. The dense
// [9*C, O] matrix with rows in (kh, kw, c) order is the 4-D weights in format cdba; it is made
// from a layout packed ahead by prepare() when there is one (in memory, whereas the original
// weights' pages were handed back after that packing: a mapped checkpoint would be read from
// disk again), else from the original weights.
memory im2col_weights(const ops::Conv2d& op, onednn::PackedWeights& packed, const memory::desc& want) {
  if (packed.has(want)) return packed.get(want, user_weights(op));  // (user not read again)
  const memory::dim C = op.in_channels(), O = op.out_channels();
  const dnnl::engine& eng = onednn::engine();
  const memory ahead = packed.any();
  const memory from = ahead ? ahead : user_weights(op);
  // From cpu_allocator(): uninitialised, in huge pages (38-75 MB per layer of the 256x256 model).
  const Tensor dense =
      Tensor::empty(Shape{9 * C * O}, DType::F32, Layout::Contiguous, Device::cpu(), nullptr);
  // (A matmul layout of another input shape is [9*C, O] already.)
  const bool matrix = from.get_desc().dims().size() == 2;
  memory flat(
      matrix ? memory::desc({9 * C, O}, dt::f32, tag::ab) : memory::desc({O, C, 3, 3}, dt::f32, tag::cdba),
      eng, dense.raw());
  const auto r = onednn::make_reorder(from.get_desc(), flat.get_desc());
  onednn::execute(r, from, flat, onednn::Scratch(r.scratchpad.get_size(), nullptr));
  onednn::stream().wait();
  const memory out = packed.get(want, memory({{9 * C, O}, dt::f32, tag::ab}, eng, dense.raw()));
  if (!ahead) onednn::release_pages(op.weight().raw(), op.weight().nbytes());
  return out;
}

void im2col_3x3(const float* x, float* col, std::int64_t N, std::int64_t H, std::int64_t W, std::int64_t C,
                int threads) {
  const std::int64_t M = N * H * W, K = 9 * C;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t p = 0; p < M; ++p) {
    const std::int64_t n = p / (H * W), h = p % (H * W) / W, w = p % W;
    float* row = col + p * K;
    for (std::int64_t kh = 0; kh < 3; ++kh)
      for (std::int64_t kw = 0; kw < 3; ++kw) {
        const std::int64_t ih = h + kh - 1, iw = w + kw - 1;
        float* d = row + (kh * 3 + kw) * C;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W)
          std::fill(d, d + C, 0.0f);
        else
          std::copy_n(x + ((n * H + ih) * W + iw) * C, C, d);
      }
  }
}

struct ConvPlan {
  dnnl::primitive compute;  // the convolution, or the im2col path's matmul
  bool im2col = false;      // src is then one image's im2col copy, compute_dst its dst as [H*W, O]
  memory weights;           // packed; shared with the other plans of this precision
  memory::desc user_src, src, dst, compute_dst, bias, scratchpad;
  std::optional<onednn::WithScratch<dnnl::reorder>> to_src;         // input -> src's dtype (f32 <-> bf16)
  std::optional<onednn::WithScratch<dnnl::reorder>> copy_residual;  // residual -> dst
  memory::desc residual;
  std::size_t scratch_bytes = 0;
};

std::shared_ptr<ConvPlan> make_plan(const ops::Conv2d& op, onednn::PackedWeights& packed, const Shape& in,
                                    Layout layout, DType in_type, const Tensor& residual, Precision p,
                                    DType out_type) {
  auto plan = std::make_shared<ConvPlan>();
  const dt dst_type = onednn::data_type(out_type);
  if (conv2d_uses_im2col(op, in, layout, p)) {  // (f32 in and out: see conv2d)
    const MatmulPd pd = make_im2col_pd(op, in, residual.defined());
    plan->compute = dnnl::matmul(pd);
    plan->im2col = true;
    plan->weights = im2col_weights(op, packed, pd.weights_desc());
    plan->src = pd.src_desc();
    plan->dst = memory::desc(dims4(op.output_shape(in)), dt::f32, tag::nhwc);
    plan->compute_dst = pd.dst_desc();
    plan->bias = op.bias().defined() ? pd.bias_desc() : memory::desc();
    plan->scratchpad = pd.scratchpad_desc();
  } else {
    const ConvPd pd = onednn::create_preferring_packed<ConvPd>(
        packed, any_weights(op, p),
        [&](const memory::desc& w) { return make_pd(op, in, layout, residual.defined(), p, w, dst_type); });
    plan->compute = dnnl::convolution_forward(pd);
    plan->weights = packed.get(pd.weights_desc(), user_weights(op));
    plan->src = pd.src_desc();
    plan->dst = plan->compute_dst = pd.dst_desc();
    plan->bias = op.bias().defined() ? pd.bias_desc() : memory::desc();
    plan->scratchpad = pd.scratchpad_desc();
    plan->user_src = memory::desc(dims4(in), onednn::data_type(in_type), layout_tag(layout));
    if (plan->user_src != plan->src) plan->to_src = onednn::make_reorder(plan->user_src, plan->src);
  }
  plan->scratch_bytes = plan->scratchpad.get_size();
  if (plan->to_src) plan->scratch_bytes = std::max(plan->scratch_bytes, plan->to_src->scratchpad.get_size());
  if (residual.defined()) {
    // A reorder copies in parallel and also handles a residual in the other layout or dtype.
    plan->residual = activation_desc(residual);
    plan->copy_residual = onednn::make_reorder(plan->residual, plan->dst);
    plan->scratch_bytes = std::max(plan->scratch_bytes, plan->copy_residual->scratchpad.get_size());
  }
  return plan;
}

}  // namespace

// oneDNN 2.6's brgemm convolution has too few output pixels per weight block on small maps;
// one matmul over an im2col copy does better there (bench_conv --benchmark_filter=small3x3,
// 2 threads: 4x4 maps 1.5x at batch 1 and 2x at batch 8; 8x8 with 1,024 channels +7 % and
// +15 %; 8x8 with 512 channels, and larger maps, slower). fp32 and NHWC only (bf16 already runs
// the 8x8 convolutions at 92 % of its peak).
bool conv2d_uses_im2col(const ops::Conv2d& op, const Shape& in, Layout layout, Precision p) {
  if (p != Precision::FP32 || layout != Layout::NHWC) return false;
  if (op.kernel_size() != 3 || op.spec().stride != 1 || op.spec().padding != 1) return false;
  const std::int64_t hw = in[2] * in[3], c = in[1];
  return (hw <= 16 && c >= 512) || (hw <= 64 && c >= 1024);
}

Tensor conv2d(const ops::Conv2d& op, OpCache& cache, const Tensor& x_in, const Tensor& residual,
              const ExecContext& ctx, bool into_residual) {
  onednn::check_precision(ctx.precision, kWhere);
  if (ctx.precision == Precision::INT8) {  // int8 unless this convolution is to stay bf16
    const ops::Int8Input mode = ops::detail::unpack_int8(cache.int8_input.load(std::memory_order_relaxed));
    if (mode.mode != ops::Int8Input::Mode::Bf16)
      return conv2d_int8(op, cache, x_in, residual, ctx, into_residual, mode);
    ExecContext bf16 = ctx;
    bf16.precision = Precision::BF16;
    return conv2d(op, cache, x_in, residual, bf16, into_residual);
  }
  // oneDNN 2.6's fp32 convolutions write f32 only (no primitive takes a bf16 dst there).
  if (ctx.precision == Precision::FP32 && ctx.activations != DType::F32)
    throw UnsupportedError(kWhere,
                           "fp32 convolutions write f32 activations; bf16 activations need precision bf16");
  const ThreadScope scope(ctx.threads);
  const Shape& in = x_in.shape();
  const Shape out = op.output_shape(in);
  // The im2col path reads f32 (a bf16 input there is an fp32 convolution of bf16 values: widen it).
  const Tensor x = conv2d_uses_im2col(op, in, x_in.layout(), ctx.precision) && x_in.dtype() != DType::F32
                       ? x_in.to_dtype(DType::F32, ctx.allocator)
                       : x_in;
  // The thread count is part of the key: oneDNN fixes its work split when it creates a primitive.
  const std::string key =
      fmt::format("conv.plan.{}.t{}.{}x{}x{}x{}.{}.{}-{}.res-{}-{}", precision_name(ctx.precision),
                  scope.threads(), in[0], in[1], in[2], in[3], layout_name(x.layout()), dtype_name(x.dtype()),
                  dtype_name(ctx.activations), residual.defined() ? layout_name(residual.layout()) : "none",
                  residual.defined() ? dtype_name(residual.dtype()) : "");
  std::shared_ptr<ConvPlan> plan;
  try {
    // Fetched before the plan: get_or_create holds the cache's lock while it makes an entry.
    const auto packed = packed_weights(cache, ctx.precision);
    plan = cache.get_or_create<ConvPlan>(key, [&] {
      return make_plan(op, *packed, in, x.layout(), x.dtype(), residual, ctx.precision, ctx.activations);
    });
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, kWhere,
                    fmt::format("no {} convolution for input {} ({})", precision_name(ctx.precision),
                                in.str(), layout_name(x.layout())));
  }

  // In place: the sum post-op adds onto what dst holds, which is then the residual already
  // (only where the residual's memory description is dst's: same layout and dtype).
  const bool in_place = into_residual && plan->residual == plan->dst;
  Tensor y =
      in_place ? residual : Tensor::empty(out, ctx.activations, x.layout(), Device::cpu(), ctx.allocator);
  try {
    const dnnl::engine& eng = onednn::engine();
    dnnl::stream& s = onednn::stream();
    const onednn::Scratch scratch(plan->scratch_bytes, ctx.allocator);
    memory dst(plan->dst, eng, y.raw());
    if (plan->copy_residual && !in_place)
      onednn::execute(*plan->copy_residual, memory(plan->residual, eng, residual.raw()), dst, scratch);
    memory src;
    Tensor staged;  // the im2col copy or the bf16 copy of x, alive until the primitive has run
    if (plan->im2col) {
      // The copy [N*H*W, 9*C] (2.4 MB per image at 8x8x1024) from the context's allocator.
      staged = Tensor::empty(Shape{in[0] * in[2] * in[3] * 9 * in[1]}, DType::F32, Layout::Contiguous,
                             Device::cpu(), ctx.allocator);
      im2col_3x3(x.data<float>(), staged.data<float>(), in[0], in[2], in[3], in[1], scope.threads());
      src = memory(plan->src, eng, staged.raw());
    } else {
      src = memory(plan->user_src, eng, x.raw());
      if (plan->to_src) {
        staged = Tensor::empty(in, x.dtype() == DType::F32 ? DType::BF16 : DType::F32, x.layout(),
                               Device::cpu(), ctx.allocator);
        const memory converted(plan->src, eng, staged.raw());
        onednn::execute(*plan->to_src, src, converted, scratch);
        src = converted;
      }
    }
    // The im2col matmul runs image by image (rows H*W each; NHWC keeps an image's rows together).
    const std::int64_t images = plan->im2col ? in[0] : 1;
    const std::int64_t src_step = in[2] * in[3] * 9 * in[1], dst_step = in[2] * in[3] * op.out_channels();
    for (std::int64_t n = 0; n < images; ++n) {
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, plan->im2col ? memory(plan->src, eng, staged.data<float>() + n * src_step) : src},
          {DNNL_ARG_WEIGHTS, plan->weights},
          {DNNL_ARG_DST, memory(plan->compute_dst, eng,
                                static_cast<char*>(y.raw()) + n * dst_step * dtype_size(y.dtype()))}};
      if (op.bias().defined()) args.emplace(DNNL_ARG_BIAS, memory(plan->bias, eng, op.bias().raw()));
      scratch.bind(args, plan->scratchpad);
      plan->compute.execute(s, args);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, kWhere, "running the convolution on input " + in.str());
  }
  return y;
}

void conv2d_prepare(const ops::Conv2d& op, OpCache& cache, const ExecContext& ctx, const Shape* input) {
  constexpr const char* where = "Conv2d::prepare";
  onednn::check_precision(ctx.precision, where);
  require_cpu_weights(op, where);
  if (ctx.precision == Precision::INT8) {
    const ops::Int8Input mode = ops::detail::unpack_int8(cache.int8_input.load(std::memory_order_relaxed));
    if (mode.mode != ops::Int8Input::Mode::Bf16) return conv2d_int8_prepare(op, cache, ctx, input);
    ExecContext bf16 = ctx;
    bf16.precision = Precision::BF16;
    return conv2d_prepare(op, cache, bf16, input);
  }
  const ThreadScope scope(ctx.threads);
  try {
    const auto packed = packed_weights(cache, ctx.precision);
    if (packed->count() > 0) return;
    if (input && conv2d_uses_im2col(op, *input, Layout::NHWC, ctx.precision)) {
      (void)im2col_weights(op, *packed, make_im2col_pd(op, *input, false).weights_desc());
      return;
    }
    // The layout oneDNN picks for the given input or a typical NHWC one; other shapes reuse it
    // when the same implementation accepts it (see create_preferring_packed).
    const std::int64_t side = std::max<std::int64_t>(32, op.kernel_size());
    const Shape in = input ? *input : Shape{1, op.in_channels(), side, side};
    const dt dst = ctx.precision == Precision::FP32 ? dt::f32 : onednn::data_type(ctx.activations);
    const ConvPd pd =
        make_pd(op, in, Layout::NHWC, false, ctx.precision, any_weights(op, ctx.precision), dst);
    packed->prepack(pd.weights_desc(), user_weights(op));
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, where, fmt::format("cannot pack the weights for {}", precision_name(ctx.precision)));
  }
}

}  // namespace diffprobe::cpu
