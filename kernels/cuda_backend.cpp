// The CUDA backend object: memory and copies of the devices (cuda_context.cpp) and the ops
// (cuda_conv.cpp, cuda_ops.cpp and the .cu kernels) behind the library's one Backend interface,
// registered at static initialisation (and by diffprobe_cuda_register(), which the target's link
// options keep in every link; see kernels/CMakeLists.txt).
#include "cuda_common.hpp"
#include "cuda_ops.hpp"
#include "diffprobe_cuda.hpp"
#include "ops/backend.hpp"

namespace diffprobe::cuda {
namespace {

using ops::detail::OpCache;
using ops::detail::OpKind;

class CudaBackend final : public ops::detail::Backend {
 public:
  const char* name() const noexcept override { return "cuda"; }
  int device_count() const noexcept override { return cuda::device_count(); }
  Allocator& allocator(int index) override { return pool(index); }
  void copy_from_host(void* dst, int index, const void* src, std::size_t bytes) override {
    cuda::copy_from_host(dst, index, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, int index, std::size_t bytes) override {
    cuda::copy_to_host(dst, src, index, bytes);
  }
  void copy_on_device(void* dst, const void* src, int index, std::size_t bytes) override {
    cuda::copy_on_device(dst, src, index, bytes);
  }
  // Every op; GroupNorm's fused 2x2 average pool is not written yet (the front end runs the
  // pool after it).
  bool supports(OpKind op) const noexcept override { return op != OpKind::GroupNormAvgPool; }

  Tensor conv2d(const ops::Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
                const ExecContext& ctx) override {
    return cuda::conv2d(op, cache, x, residual, ctx);
  }
  void conv2d_prepare(const ops::Conv2d& op, OpCache& cache, const ExecContext& ctx) override {
    cuda::conv2d_prepare(op, cache, ctx);
  }
  Tensor linear(const ops::Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
                const ExecContext& ctx) override {
    return cuda::linear(op, cache, x, silu_input, ctx);
  }
  void linear_prepare(const ops::Linear& op, OpCache& cache, const ExecContext& ctx) override {
    cuda::linear_prepare(op, cache, ctx);
  }
  Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const ops::GroupNormArgs& args,
                    const ExecContext& ctx) override {
    return cuda::group_norm(x, gamma, beta, args, ctx);
  }
  Tensor attention(const Tensor& qkv, int heads, ops::QkvOrder order, const ExecContext& ctx) override {
    return cuda::attention(qkv, heads, order, ctx);
  }
  Tensor silu(const Tensor& x, const ExecContext& ctx) override { return cuda::silu(x, ctx); }
  Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx) override {
    return cuda::add(a, b, ctx);
  }
  Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx) override { return cuda::avg_pool2x2(x, ctx); }
  Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx) override {
    return cuda::upsample_nearest2x(x, ctx);
  }
  Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx) override {
    return cuda::concat_channels(a, b, ctx);
  }
  Tensor adaptive_pool2d(const Tensor& x, int oh, int ow, bool max, const ExecContext& ctx) override {
    return cuda::adaptive_pool2d(x, oh, ow, max, ctx);
  }
  Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx) override {
    return cuda::timestep_embedding(t, dim, ctx);
  }
};

// Registration touches no CUDA API: loading the library costs nothing and works without a GPU.
struct Registrar {
  Registrar() { diffprobe_cuda_register(); }
} registrar;

}  // namespace

void register_backend() { diffprobe_cuda_register(); }

}  // namespace diffprobe::cuda

extern "C" void diffprobe_cuda_register(void) {
  static diffprobe::cuda::CudaBackend* backend = new diffprobe::cuda::CudaBackend();  // never destroyed
  diffprobe::ops::detail::register_backend(diffprobe::DeviceType::CUDA, *backend);
}
