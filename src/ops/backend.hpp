#pragma once
// The op layer's device dispatch. Public ops (include/diffprobe/ops/) validate their arguments
// once, ask the backend of the operands' device what it supports, then call it. One Backend
// object per device type serves memory, copies (DeviceBackend) and ops, found through one
// registry: the CPU backend (src/cpu/, oneDNN) is always registered; the CUDA backend (kernels/)
// registers itself when it is linked in, or explicitly (diffprobe::cuda::register_backend()).
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "core/device_backend.hpp"
#include "diffprobe/ops/attention.hpp"
#include "diffprobe/ops/conv2d.hpp"
#include "diffprobe/ops/elementwise.hpp"
#include "diffprobe/ops/group_norm.hpp"
#include "diffprobe/ops/linear.hpp"

namespace diffprobe::ops::detail {

class ConvInputObserver;

/// Backend-prepared state of one parameterised op (reordered weights, primitives per shape).
/// Each backend stores what it likes under keys of its choosing. Shared by the op's copies, as
/// are a convolution's int8 setting and calibration observer.
struct OpCache {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<void>> entries;
  std::atomic<std::uint64_t> int8_input{0};  // Int8Input packed by pack_int8 (0: PerImage)
  std::atomic<ConvInputObserver*> observer{nullptr};

  template <class T, class Make> std::shared_ptr<T> get_or_create(const std::string& key, Make&& make) {
    std::lock_guard lock(mu);
    auto& slot = entries[key];
    if (!slot) slot = std::shared_ptr<T>(make());
    return std::static_pointer_cast<T>(slot);
  }
};

inline std::uint64_t pack_int8(const Int8Input& in) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &in.scale, sizeof bits);
  return (static_cast<std::uint64_t>(in.mode) << 32) | bits;
}
inline Int8Input unpack_int8(std::uint64_t v) {
  Int8Input in;
  in.mode = static_cast<Int8Input::Mode>(v >> 32);
  const auto bits = static_cast<std::uint32_t>(v);
  std::memcpy(&in.scale, &bits, sizeof bits);
  return in;
}

/// Sees each input of the convolutions it is attached to, before they run (the statistics of
/// UNet::calibrate_int8). Called from the thread that runs the op.
class ConvInputObserver {
 public:
  virtual ~ConvInputObserver() = default;
  virtual void observe(const Conv2d& op, const Tensor& x) = 0;
};

struct ConvAccess {
  static OpCache& cache(const Conv2d& op) { return *op.cache_; }
};

/// The ops (and fused variants) a front end may ask a backend about before choosing how to run.
enum class OpKind : std::uint8_t {
  Conv2d,
  Linear,
  GroupNorm,
  GroupNormAvgPool,  // GroupNorm(+SiLU) then a 2x2 average pool in one pass (ResBlock-down)
  Attention,
  Silu,
  Add,
  AvgPool2x2,
  UpsampleNearest2x,
  ConcatChannels,
  AdaptivePool2d,
  TimestepEmbedding,
};
const char* op_name(OpKind op) noexcept;

/// Arguments arrive validated: shapes agree; image operands (x, residual, qkv, a, b) are f32 or bf16
/// as supports_activations allows, everything else f32; all operands on this backend's device.
class Backend : public diffprobe::detail::DeviceBackend {
 public:
  /// Whether this backend runs `op` itself. The front end asks instead of testing device types:
  /// an unsupported fused variant is run as its parts; an unsupported op is an UnsupportedError
  /// naming the backend. (Precisions are checked by the backend, which knows the hardware.)
  virtual bool supports(OpKind op) const noexcept = 0;
  /// Whether the ops read and write activations of this dtype (ExecContext::activations and the
  /// image operands): F32 everywhere; BF16 where the backend says so. The front end refuses the
  /// others with an UnsupportedError naming the backend.
  virtual bool supports_activations(DType dtype) const noexcept { return dtype == DType::F32; }
  virtual Tensor conv2d(const Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
                        const ExecContext& ctx) = 0;
  /// conv2d with a residual nothing else refers to: a backend may write the output into it.
  virtual Tensor conv2d_into_residual(const Conv2d& op, OpCache& cache, const Tensor& x, Tensor residual,
                                      const ExecContext& ctx) {
    return conv2d(op, cache, x, residual, ctx);
  }
  virtual void conv2d_prepare(const Conv2d& op, OpCache& cache, const ExecContext& ctx) = 0;
  /// Prepares for inputs of a known shape; a backend whose weight layout does not depend on the
  /// shape prepares as without one.
  virtual void conv2d_prepare_for(const Conv2d& op, OpCache& cache, const ExecContext& ctx,
                                  const Shape& input) {
    (void)input;
    conv2d_prepare(op, cache, ctx);
  }
  virtual Tensor linear(const Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
                        const ExecContext& ctx) = 0;
  virtual void linear_prepare(const Linear& op, OpCache& cache, const ExecContext& ctx) = 0;
  virtual Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                            const GroupNormArgs& args, const ExecContext& ctx) = 0;
  virtual Tensor attention(const Tensor& qkv, int heads, QkvOrder order, const ExecContext& ctx) = 0;
  virtual Tensor silu(const Tensor& x, const ExecContext& ctx) = 0;
  virtual Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx) = 0;
  virtual Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx) = 0;
  virtual Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx) = 0;
  virtual Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx) = 0;
  virtual Tensor adaptive_pool2d(const Tensor& x, int out_h, int out_w, bool max, const ExecContext& ctx) = 0;
  virtual Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx) = 0;
};

Backend& cpu_backend();

/// Makes `backend` the one serving `type` (it must live until the process ends). Registering the
/// same object again does nothing; replacing a registered backend with another is refused
/// (ArgumentError), and the CPU's cannot be replaced.
void register_backend(DeviceType type, Backend& backend);

/// The backend registered for `type`, nullptr when none is.
Backend* registry_slot(DeviceType type) noexcept;
/// The backend serving `device`; DeviceError when that device type has none in this build.
Backend& backend_for(Device device, const char* where);
/// backend_for(...), then UnsupportedError unless it supports `op`.
Backend& backend_for(Device device, OpKind op, const char* where);

}  // namespace diffprobe::ops::detail
