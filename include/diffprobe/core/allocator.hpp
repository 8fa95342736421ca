#pragma once
// Pluggable memory for tensors. A forward pass allocates activations through an Allocator;
// the CachingAllocator keeps freed blocks and hands them out again, so after the first pass
// at a given shape no op calls malloc, and a released skip tensor's memory is reused at once.
#include <cstddef>
#include <exception>
#include <memory>

#include "diffprobe/core/device.hpp"

namespace diffprobe {

inline constexpr std::size_t kTensorAlignment = 64;

class Allocator {
 public:
  virtual ~Allocator() = default;
  /// Returns `bytes` bytes aligned to kTensorAlignment (never nullptr; throws on failure).
  virtual void* allocate(std::size_t bytes) = 0;
  /// Gives back p, with the `bytes` it was allocated with (allocators may rely on them).
  virtual void deallocate(void* p, std::size_t bytes) noexcept = 0;
  virtual Device device() const noexcept = 0;
  /// Brackets one repeatable unit of work (a forward pass), for allocators that plan memory
  /// across calls (PlannedAllocator). `completed` is false when the pass ended by an exception.
  virtual void begin_pass() {}
  virtual void end_pass(bool completed) noexcept { (void)completed; }
};

/// RAII bracket of one pass on an allocator (nullptr: nothing to do).
class AllocatorPass {
 public:
  explicit AllocatorPass(Allocator* a) : a_(a), exceptions_(std::uncaught_exceptions()) {
    if (a_) a_->begin_pass();
  }
  ~AllocatorPass() {
    if (a_) a_->end_pass(std::uncaught_exceptions() == exceptions_);
  }
  AllocatorPass(const AllocatorPass&) = delete;
  AllocatorPass& operator=(const AllocatorPass&) = delete;

 private:
  Allocator* a_;
  int exceptions_;
};

/// Plain aligned heap memory (the default for tensors created outside a forward pass, and for a
/// forward given no allocator). Blocks of 2 MiB and more are page mappings on 2 MiB boundaries,
/// advised for transparent huge pages.
Allocator& cpu_allocator() noexcept;

/// Size-bucketed cache of CPU blocks. Thread-safe. Statistics let tests and benchmarks see the
/// peak working set of a forward pass.
class CachingAllocator final : public Allocator {
 public:
  CachingAllocator();
  ~CachingAllocator() override;
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(std::size_t bytes) override;
  void deallocate(void* p, std::size_t bytes) noexcept override;
  Device device() const noexcept override { return Device::cpu(); }

  /// Frees every cached (currently unused) block.
  void release_cached() noexcept;
  std::size_t bytes_in_use() const noexcept;
  std::size_t peak_bytes_in_use() const noexcept;
  std::size_t bytes_reserved() const noexcept;      // in use + cached
  std::size_t system_allocations() const noexcept;  // how often the heap was asked

 private:
  struct Impl;  // the cache and its lock (allocator.cpp), as PlannedAllocator keeps its plan
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffprobe

namespace diffprobe {
/// The plain allocator of a device. CUDA's is provided by the CUDA backend; without it
/// this throws DeviceError.
Allocator& default_allocator(Device device);
}  // namespace diffprobe
