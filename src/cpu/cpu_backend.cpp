// The CPU backend: host memory, and the CPU op implementations (oneDNN and our own kernels)
// bound into the op layer's Backend interface. Always registered.
#include <cstring>

#include "cpu/cpu_ops.hpp"

namespace diffprobe::ops::detail {
namespace {

class CpuBackend final : public Backend {
 public:
  const char* name() const noexcept override { return "cpu"; }
  int device_count() const noexcept override { return 1; }
  Allocator& allocator(int) override { return cpu_allocator(); }
  void copy_from_host(void* dst, int, const void* src, std::size_t bytes) override { copy(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, int, std::size_t bytes) override { copy(dst, src, bytes); }
  void copy_on_device(void* dst, const void* src, int, std::size_t bytes) override { copy(dst, src, bytes); }
  bool supports(OpKind) const noexcept override { return true; }  // every op, GroupNormAvgPool fused
  bool supports_activations(DType d) const noexcept override { return d == DType::F32 || d == DType::BF16; }

  Tensor conv2d(const Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
                const ExecContext& ctx) override {
    return cpu::conv2d(op, cache, x, residual, ctx);
  }
  Tensor conv2d_into_residual(const Conv2d& op, OpCache& cache, const Tensor& x, Tensor residual,
                              const ExecContext& ctx) override {
    return cpu::conv2d(op, cache, x, residual, ctx, /*into_residual=*/true);
  }
  void conv2d_prepare(const Conv2d& op, OpCache& cache, const ExecContext& ctx) override {
    cpu::conv2d_prepare(op, cache, ctx);
  }
  void conv2d_prepare_for(const Conv2d& op, OpCache& cache, const ExecContext& ctx,
                          const Shape& input) override {
    cpu::conv2d_prepare(op, cache, ctx, &input);
  }
  Tensor linear(const Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
                const ExecContext& ctx) override {
    return cpu::linear(op, cache, x, silu_input, ctx);
  }
  void linear_prepare(const Linear& op, OpCache& cache, const ExecContext& ctx) override {
    cpu::linear_prepare(op, cache, ctx);
  }
  Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const GroupNormArgs& args,
                    const ExecContext& ctx) override {
    return cpu::group_norm(x, gamma, beta, args, ctx);
  }
  Tensor attention(const Tensor& qkv, int heads, QkvOrder order, const ExecContext& ctx) override {
    return cpu::attention(qkv, heads, order, ctx);
  }
  Tensor silu(const Tensor& x, const ExecContext& ctx) override { return cpu::silu(x, ctx); }
  Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx) override {
    return cpu::add(a, b, ctx);
  }
  Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx) override { return cpu::avg_pool2x2(x, ctx); }
  Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx) override {
    return cpu::upsample_nearest2x(x, ctx);
  }
  Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx) override {
    return cpu::concat_channels(a, b, ctx);
  }
  Tensor adaptive_pool2d(const Tensor& x, int oh, int ow, bool max, const ExecContext& ctx) override {
    return cpu::adaptive_pool2d(x, oh, ow, max, ctx);
  }
  Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx) override {
    return cpu::timestep_embedding(t, dim, ctx);
  }

 private:
  static void copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace diffprobe::ops::detail
