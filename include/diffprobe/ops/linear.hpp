#pragma once
// Fully connected layer y = x W^T + b, through the backend's GEMM (oneDNN matmul on the CPU).
#include <memory>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"
#include "diffprobe/ops/conv2d.hpp"

namespace diffprobe::ops {

class Linear {
 public:
  Linear() = default;
  /// weight: f32 [O, I]; bias: f32 [O] or undefined.
  Linear(Tensor weight, Tensor bias);
  /// x: [N, I] contiguous f32 -> [N, O]. `silu_input` applies SiLU to x first (ADM's emb_layers).
  Tensor forward(const Tensor& x, const ExecContext& ctx = {}, bool silu_input = false) const;
  void prepare(const ExecContext& ctx) const;
  double flops(std::int64_t rows) const noexcept { return 2.0 * rows * in_features() * out_features(); }

  bool defined() const noexcept { return weight_.defined(); }
  const Tensor& weight() const noexcept { return weight_; }
  const Tensor& bias() const noexcept { return bias_; }
  std::int64_t in_features() const noexcept { return weight_.defined() ? weight_.shape()[1] : 0; }
  std::int64_t out_features() const noexcept { return weight_.defined() ? weight_.shape()[0] : 0; }

 private:
  Tensor weight_, bias_;
  std::shared_ptr<detail::OpCache> cache_;
};

}  // namespace diffprobe::ops
