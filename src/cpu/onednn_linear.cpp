// CPU fully connected layer through oneDNN matmul: x [N, I] times W^T [I, O] plus bias. The
// weights are packed once per precision; one matmul primitive per (rows, precision, threads)
// is kept in the op's cache.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "cpu/cpu_ops.hpp"
#include "cpu/onednn_common.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using MatmulPd = dnnl::matmul::primitive_desc;

constexpr const char* kWhere = "Linear";

std::shared_ptr<onednn::PackedWeights> packed_weights(OpCache& cache, Precision p) {
  return cache.get_or_create<onednn::PackedWeights>(fmt::format("linear.weights.{}", precision_name(p)),
                                                    [] { return std::make_shared<onednn::PackedWeights>(); });
}

// W [O, I] row-major read in place as the matmul's [I, O] operand (a transposed view).
memory user_weights(const ops::Linear& op) {
  return memory({{op.in_features(), op.out_features()}, dt::f32, tag::ba}, onednn::engine(),
                op.weight().raw());
}

memory::desc any_weights(const ops::Linear& op, Precision p) {
  return memory::desc({op.in_features(), op.out_features()}, onednn::compute_type(p), tag::any);
}

MatmulPd make_pd(const ops::Linear& op, std::int64_t rows, Precision p, const memory::desc& weights) {
  const memory::desc src({rows, op.in_features()}, onednn::compute_type(p), tag::ab);
  const memory::desc dst({rows, op.out_features()}, dt::f32, tag::ab);
  const dnnl::primitive_attr attr = onednn::user_scratchpad_attr();
  if (op.bias().defined()) {
    const memory::desc bias({1, op.out_features()}, dt::f32, tag::ab);
    return MatmulPd({src, weights, bias, dst}, attr, onednn::engine());
  }
  return MatmulPd({src, weights, dst}, attr, onednn::engine());
}

struct LinearPlan {
  dnnl::matmul matmul;
  memory weights;  // packed; shared with the other plans of this precision
  memory::desc src, dst, bias, scratchpad;
};

std::shared_ptr<LinearPlan> make_plan(const ops::Linear& op, onednn::PackedWeights& packed, std::int64_t rows,
                                      Precision p) {
  const MatmulPd pd = onednn::create_preferring_packed<MatmulPd>(
      packed, any_weights(op, p), [&](const memory::desc& w) { return make_pd(op, rows, p, w); });
  auto plan = std::make_shared<LinearPlan>();
  plan->matmul = dnnl::matmul(pd);
  plan->weights = packed.get(pd.weights_desc(), user_weights(op));
  plan->src = pd.src_desc();
  plan->dst = pd.dst_desc();
  plan->bias = op.bias().defined() ? pd.bias_desc() : memory::desc();
  plan->scratchpad = pd.scratchpad_desc();
  return plan;
}

// out[i] = silu(x[i]) or x[i], stored by `store` (as f32 or bf16). The input is small (a batch
// of embeddings), so a plain loop beats a oneDNN eltwise + reorder pair here.
template <class Store> void map_input(const float* x, std::int64_t n, bool silu, Store store) {
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    float v = x[i];
    if (silu) v = v / (1.0f + std::exp(-v));
    store(i, v);
  }
}

void require_cpu_weights(const ops::Linear& op, const char* where) {
  if (!op.weight().device().is_cpu())
    throw DeviceError(
        where, "the CPU backend needs the weights on the CPU, they are on " + op.weight().device().str());
}

}  // namespace

Tensor linear(const ops::Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
              const ExecContext& ctx) {
  onednn::check_precision(ctx.precision, kWhere);
  const ThreadScope scope(ctx.threads);
  const std::int64_t rows = x.shape()[0];
  const std::string key =
      fmt::format("linear.plan.{}.t{}.rows{}", precision_name(ctx.precision), scope.threads(), rows);
  std::shared_ptr<LinearPlan> plan;
  try {
    // Fetched before the plan: get_or_create holds the cache's lock while it makes an entry.
    const auto packed = packed_weights(cache, ctx.precision);
    plan = cache.get_or_create<LinearPlan>(key, [&] { return make_plan(op, *packed, rows, ctx.precision); });
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, kWhere,
                    fmt::format("no {} matmul for input {}", precision_name(ctx.precision), x.shape().str()));
  }

  Tensor y = Tensor::empty(Shape{rows, op.out_features()}, DType::F32, Layout::Contiguous, Device::cpu(),
                           ctx.allocator);
  const float* xf = x.data<const float>();
  Tensor staged;  // x after SiLU and/or bf16 conversion
  if (ctx.precision == Precision::BF16) {
    staged = Tensor::empty(x.shape(), DType::BF16, Layout::Contiguous, Device::cpu(), ctx.allocator);
    std::uint16_t* out = staged.data<std::uint16_t>();
    map_input(xf, x.numel(), silu_input, [out](std::int64_t i, float v) { out[i] = float_to_bf16(v); });
  } else if (silu_input) {
    staged = Tensor::empty(x.shape(), DType::F32, Layout::Contiguous, Device::cpu(), ctx.allocator);
    float* out = staged.data<float>();
    map_input(xf, x.numel(), true, [out](std::int64_t i, float v) { out[i] = v; });
  }
  try {
    const dnnl::engine& eng = onednn::engine();
    dnnl::stream& s = onednn::stream();
    const onednn::Scratch scratch(plan->scratchpad.get_size(), ctx.allocator);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(plan->src, eng, (staged.defined() ? staged : x).raw())},
        {DNNL_ARG_WEIGHTS, plan->weights},
        {DNNL_ARG_DST, memory(plan->dst, eng, y.raw())}};
    if (op.bias().defined()) args.emplace(DNNL_ARG_BIAS, memory(plan->bias, eng, op.bias().raw()));
    scratch.bind(args, plan->scratchpad);
    plan->matmul.execute(s, args);
    s.wait();
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, kWhere, "running the matmul on input " + x.shape().str());
  }
  return y;
}

void linear_prepare(const ops::Linear& op, OpCache& cache, const ExecContext& ctx) {
  constexpr const char* where = "Linear::prepare";
  onednn::check_precision(ctx.precision, where);
  require_cpu_weights(op, where);
  const ThreadScope scope(ctx.threads);
  try {
    const auto packed = packed_weights(cache, ctx.precision);
    if (packed->count() > 0) return;
    // Packed for one row; oneDNN's matmul keeps this layout for other row counts (and when it
    // does not, the first call at that count packs its own).
    const MatmulPd pd = make_pd(op, 1, ctx.precision, any_weights(op, ctx.precision));
    packed->prepack(pd.weights_desc(), user_weights(op));
  } catch (const dnnl::error& e) {
    onednn::rethrow(e, where, fmt::format("cannot pack the weights for {}", precision_name(ctx.precision)));
  }
}

}  // namespace diffprobe::cpu
