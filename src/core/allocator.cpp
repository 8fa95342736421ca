#include "diffprobe/core/allocator.hpp"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include "core/page_mapping.hpp"
#include "device_backend.hpp"
#include "diffprobe/core/error.hpp"

namespace diffprobe {
namespace {

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

void* aligned_heap_alloc(std::size_t bytes) {
  void* p = std::aligned_alloc(kTensorAlignment, round_up(bytes == 0 ? 1 : bytes, kTensorAlignment));
  if (!p) throw std::bad_alloc();
  return p;
}

// Blocks of 2 MiB and more are page mappings of our own, on a 2 MiB boundary and advised for
// transparent huge pages, so that writing one is a fault per 2 MiB rather than per 4 KiB. A
// forward given no allocator asks for dozens of such activations every pass (64 MiB each at
// 256x256x256), which glibc maps afresh (above 32 MiB) or trims and re-faults (below); on this
// project's VM a small-page fault costs ~9 us. bench_unet --allocator=heap, 256x256 model to
// block 24: 145 K faults and 3.27 s per pass with glibc's blocks, 1.9 K and 1.8-2.3 s with these.
constexpr std::size_t kMappedHeapBytes = detail::kHugePageBytes;

class HeapAllocator final : public Allocator {
 public:
  void* allocate(std::size_t bytes) override {
    return bytes >= kMappedHeapBytes ? detail::map_anonymous_huge(bytes) : aligned_heap_alloc(bytes);
  }
  void deallocate(void* p, std::size_t bytes) noexcept override {
    if (!p) return;
    if (bytes >= kMappedHeapBytes)
      detail::unmap_anonymous(p, bytes);
    else
      std::free(p);
  }
  Device device() const noexcept override { return Device::cpu(); }
};

// Buckets: round to 4 KiB below 1 MiB, to 1/8 of the next power of two above, so a block
// can serve requests up to ~12% smaller without wasting much.
std::size_t bucket_size(std::size_t bytes) {
  if (bytes <= (1u << 20)) return round_up(bytes == 0 ? 1 : bytes, 4096);
  std::size_t p = 1;
  while (p < bytes) p <<= 1;
  return round_up(bytes, p / 8);
}

}  // namespace

Allocator& cpu_allocator() noexcept {
  static HeapAllocator heap;
  return heap;
}

Allocator& default_allocator(Device device) {
  if (device.is_cpu()) return cpu_allocator();
  detail::DeviceBackend* backend = detail::device_backend(device.type);
  if (!backend)
    throw DeviceError("default_allocator",
                      "device " + device.str() + " requested, but this build has no backend for it");
  return backend->allocator(device.index);
}

struct CachingAllocator::Impl {
  std::mutex mu;
  std::multimap<std::size_t, void*> free;       // block size -> cached block
  std::unordered_map<void*, std::size_t> live;  // handed-out block -> its size
  std::size_t in_use = 0, peak = 0, reserved = 0, sys_allocs = 0;
};

CachingAllocator::CachingAllocator() : impl_(std::make_unique<Impl>()) {}
CachingAllocator::~CachingAllocator() { release_cached(); }

void* CachingAllocator::allocate(std::size_t bytes) {
  const std::size_t size = bucket_size(bytes);
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->free.lower_bound(size);
    // Reuse a cached block if it is not more than 25% larger than needed.
    if (it != impl_->free.end() && it->first <= size + size / 4) {
      void* p = it->second;
      impl_->in_use += it->first;
      impl_->live.emplace(p, it->first);
      impl_->free.erase(it);
      impl_->peak = std::max(impl_->peak, impl_->in_use);
      return p;
    }
  }
  void* p = aligned_heap_alloc(size);
  std::lock_guard lock(impl_->mu);
  impl_->live.emplace(p, size);
  impl_->in_use += size;
  impl_->reserved += size;
  ++impl_->sys_allocs;
  impl_->peak = std::max(impl_->peak, impl_->in_use);
  return p;
}

void CachingAllocator::deallocate(void* p, std::size_t /*bytes*/) noexcept {
  if (!p) return;
  std::lock_guard lock(impl_->mu);
  // A reused block may be larger than the request: book it at its real size.
  auto it = impl_->live.find(p);
  if (it == impl_->live.end()) return;  // not ours; ignore rather than corrupt the cache
  impl_->in_use -= it->second;
  impl_->free.emplace(it->second, p);
  impl_->live.erase(it);
}

void CachingAllocator::release_cached() noexcept {
  std::lock_guard lock(impl_->mu);
  for (auto& [size, p] : impl_->free) {
    std::free(p);
    impl_->reserved -= size;
  }
  impl_->free.clear();
}

std::size_t CachingAllocator::bytes_in_use() const noexcept {
  std::lock_guard lock(impl_->mu);
  return impl_->in_use;
}
std::size_t CachingAllocator::peak_bytes_in_use() const noexcept {
  std::lock_guard lock(impl_->mu);
  return impl_->peak;
}
std::size_t CachingAllocator::bytes_reserved() const noexcept {
  std::lock_guard lock(impl_->mu);
  return impl_->reserved;
}
std::size_t CachingAllocator::system_allocations() const noexcept {
  std::lock_guard lock(impl_->mu);
  return impl_->sys_allocs;
}

}  // namespace diffprobe
