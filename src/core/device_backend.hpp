#pragma once
// The device side of a backend: the memory and copies of one device type. The op side
// (ops::detail::Backend in src/ops/backend.hpp) extends this class, so one object per device type
// serves memory, copies and ops, and one registry finds it (ops::detail::register_backend).
// The core asks it for allocators and copies without depending on any device library.
#include <cstddef>

#include "diffprobe/core/allocator.hpp"
#include "diffprobe/core/device.hpp"

namespace diffprobe::detail {

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  /// "cpu", "cuda": what error messages and `diffprobe info` call it.
  virtual const char* name() const noexcept = 0;
  /// Devices of this type present now (0 for a CUDA backend without a GPU; never throws).
  virtual int device_count() const noexcept = 0;
  /// The default allocator of tensors on device `index` (DeviceError for an absent device).
  virtual Allocator& allocator(int index) = 0;
  /// Synchronous copies of `bytes` bytes between the host and device `index`, and within it.
  virtual void copy_from_host(void* dst, int index, const void* src, std::size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, int index, std::size_t bytes) = 0;
  virtual void copy_on_device(void* dst, const void* src, int index, std::size_t bytes) = 0;
};

/// The backend registered for a device type (the CPU's is always there); nullptr when this build
/// or program has none for it.
DeviceBackend* device_backend(DeviceType type) noexcept;

}  // namespace diffprobe::detail
