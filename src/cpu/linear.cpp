// CPU fully connected layer y = x W^T + b with a fixed summation order. Every output is
// b[o] + sum over i ascending of x[n, i] * W[o, i], whatever the number of rows, the row's place
// among them and the thread count. A GEMM library picks its kernel and reduction split by shape
// (oneDNN 2.6's AVX2 sgemm gives other low bits for one row than for two), which made a
// sample's features depend on the batch it came in. The layer is a small part of the U-Net
// (the time embedding and each ResBlock's emb_layers: < 0.5 % of a forward's FLOPs), so a
// plain register-blocked loop costs nothing measurable. The file is built with
// -ffp-contract=off, so the AVX-512, AVX2 and baseline clones give the same bits.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_ops.hpp"
#include "cpu/onednn_common.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::cpu {
namespace {

constexpr const char* kWhere = "Linear";
constexpr std::int64_t kRows = 4;      // rows sharing each load of a weight row
constexpr std::int64_t kOutputs = 32;  // outputs per block: 4 x 32 accumulators stay in registers

// W [O, I] transposed to [I, O] once, so the inner loop runs over contiguous outputs (bf16:
// each value rounded to bf16 and kept as f32).
struct TransposedWeights {
  std::vector<float> wt;
};

__attribute__((target_clones("avx512f", "avx2", "default"))) void linear_rows(
    const float* x, std::int64_t rows, std::int64_t in, const float* wt, std::int64_t out, const float* bias,
    float* y, int threads) {
  const std::int64_t row_blocks = (rows + kRows - 1) / kRows, out_blocks = (out + kOutputs - 1) / kOutputs;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (std::int64_t rb = 0; rb < row_blocks; ++rb)
    for (std::int64_t ob = 0; ob < out_blocks; ++ob) {
      const std::int64_t r0 = rb * kRows, nr = std::min(kRows, rows - r0);
      const std::int64_t o0 = ob * kOutputs, no = std::min(kOutputs, out - o0);
      float acc[kRows][kOutputs];
      for (std::int64_t r = 0; r < kRows; ++r)
        for (std::int64_t o = 0; o < kOutputs; ++o) acc[r][o] = bias && o < no ? bias[o0 + o] : 0.0f;
      if (no == kOutputs && nr == kRows) {  // the common case: fixed trip counts, vectorised
        for (std::int64_t i = 0; i < in; ++i) {
          const float* w = wt + i * out + o0;
          for (std::int64_t r = 0; r < kRows; ++r) {
            const float xv = x[(r0 + r) * in + i];
            for (std::int64_t o = 0; o < kOutputs; ++o) acc[r][o] += xv * w[o];
          }
        }
      } else {
        for (std::int64_t i = 0; i < in; ++i) {
          const float* w = wt + i * out + o0;
          for (std::int64_t r = 0; r < nr; ++r) {
            const float xv = x[(r0 + r) * in + i];
            for (std::int64_t o = 0; o < no; ++o) acc[r][o] += xv * w[o];
          }
        }
      }
      for (std::int64_t r = 0; r < nr; ++r) std::copy_n(acc[r], no, y + (r0 + r) * out + o0);
    }
}

float to_bf16_value(float v) { return bf16_to_float(float_to_bf16(v)); }

std::shared_ptr<TransposedWeights> transposed(const ops::Linear& op, OpCache& cache, Precision p) {
  return cache.get_or_create<TransposedWeights>(fmt::format("linear.wt.{}", precision_name(p)), [&] {
    auto t = std::make_shared<TransposedWeights>();
    const std::int64_t O = op.out_features(), I = op.in_features();
    t->wt.resize(static_cast<std::size_t>(O * I));
    const float* w = op.weight().data<const float>();
    const bool bf16 = onednn::bf16_operands(p);
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t i = 0; i < I; ++i) {
        const float v = w[o * I + i];
        t->wt[static_cast<std::size_t>(i * O + o)] = bf16 ? to_bf16_value(v) : v;
      }
    return t;
  });
}

void require_cpu_weights(const ops::Linear& op, const char* where) {
  if (!op.weight().device().is_cpu())
    throw DeviceError(
        where, "the CPU backend needs the weights on the CPU, they are on " + op.weight().device().str());
}

}  // namespace

// bf16 precision rounds x and W to bf16 as a bf16 GEMM does; their products are exact in f32 and
// are summed in f32, in the same fixed order.
Tensor linear(const ops::Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
              const ExecContext& ctx) {
  onednn::check_precision(ctx.precision, kWhere);
  require_cpu_weights(op, kWhere);
  const ThreadScope scope(ctx.threads);
  const std::int64_t rows = x.shape()[0], in = op.in_features(), out = op.out_features();
  const auto t = transposed(op, cache, ctx.precision);
  const float* xf = x.data<const float>();
  Tensor staged;  // SiLU(x) and/or x rounded to bf16
  const bool bf16 = onednn::bf16_operands(ctx.precision);
  if (silu_input || bf16) {
    staged = Tensor::empty(x.shape(), DType::F32, Layout::Contiguous, Device::cpu(), ctx.allocator);
    float* s = staged.data<float>();
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      float v = xf[i];
      if (silu_input) v = v / (1.0f + std::exp(-v));
      s[i] = bf16 ? to_bf16_value(v) : v;
    }
    xf = s;
  }
  Tensor y = Tensor::empty(Shape{rows, out}, DType::F32, Layout::Contiguous, Device::cpu(), ctx.allocator);
  linear_rows(xf, rows, in, t->wt.data(), out, op.bias().defined() ? op.bias().data<const float>() : nullptr,
              y.data<float>(), scope.threads());
  return y;
}

void linear_prepare(const ops::Linear& op, OpCache& cache, const ExecContext& ctx) {
  constexpr const char* where = "Linear::prepare";
  onednn::check_precision(ctx.precision, where);
  require_cpu_weights(op, where);
  (void)transposed(op, cache, ctx.precision);
}

}  // namespace diffprobe::cpu
