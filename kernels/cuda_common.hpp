#pragma once
// Shared plumbing of the CUDA backend's host code: error translation, the per-device stream and
// memory pool, scratch buffers, and the current-device guard.
//
// Execution model: every op, copy and library call of a device is enqueued on that device's one
// stream, so stream order alone orders them; the host waits only in copies to the host. Memory a
// tensor or scratch buffer gives back is reused by later work on the same stream, hence safely.
#include <cuda_runtime_api.h>

#include <cstddef>

#include "diffprobe/core/allocator.hpp"
#include "diffprobe/core/context.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::cuda {

/// Throws DeviceError (where: "cuda <what>") when `e` is an error.
void check(cudaError_t e, const char* what);

/// Visible CUDA devices; 0 without a driver or GPU (never throws).
int device_count() noexcept;
/// DeviceError unless `index` names a visible device.
void require_device(int index, const char* where);

/// The device's stream (created on first use, never destroyed).
cudaStream_t stream(int index);
/// The device's caching memory pool (the default allocator of its tensors).
Allocator& pool(int index);
/// Synchronous copies of `bytes` bytes between the host and device `index`, and within it.
void copy_from_host(void* dst, int index, const void* src, std::size_t bytes);
void copy_to_host(void* dst, const void* src, int index, std::size_t bytes);
void copy_on_device(void* dst, const void* src, int index, std::size_t bytes);

/// Makes `index` the current device for the scope, restoring the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

/// Temporary device memory from the pool, returned at scope exit (stream order keeps it safe).
class Scratch {
 public:
  Scratch(int device, std::size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const noexcept { return p_; }
  template <class T> T* as() const noexcept { return static_cast<T*>(p_); }

 private:
  Allocator& a_;
  std::size_t bytes_;
  void* p_;
};

/// The allocator an op's output comes from: the context's when it serves `device`, else the pool.
inline Allocator* out_allocator(const ExecContext& ctx, Device device) {
  return ctx.allocator && ctx.allocator->device() == device ? ctx.allocator : nullptr;
}

/// A new f32 tensor on `like`'s device.
inline Tensor new_tensor(const Shape& shape, Layout layout, const Tensor& like, const ExecContext& ctx) {
  return Tensor::empty(shape, DType::F32, layout, like.device(), out_allocator(ctx, like.device()));
}

}  // namespace diffprobe::cuda
