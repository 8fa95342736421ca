#pragma once
// Hooks through which an optional device backend (CUDA) plugs into the core without the core
// depending on it. The CUDA backend fills these in at static-initialisation time.
#include <cstddef>

#include "diffprobe/core/allocator.hpp"
#include "diffprobe/core/device.hpp"

namespace diffprobe::detail {

struct DeviceHooks {
  Allocator& (*allocator)(int index) = nullptr;
  // Synchronous copies of `bytes` bytes. dst/src devices as named.
  void (*copy_to_device)(void* dst, int index, const void* src, std::size_t bytes) = nullptr;
  void (*copy_to_host)(void* dst, const void* src, int index, std::size_t bytes) = nullptr;
  void (*copy_device)(void* dst, const void* src, int index, std::size_t bytes) = nullptr;
  int (*device_count)() = nullptr;
};

DeviceHooks& cuda_hooks() noexcept;

}  // namespace diffprobe::detail
