// The CUDA backend's device state: per-device stream and caching memory pool, and host <-> device
// copies (through pinned staging buffers for large ones). The Backend object that serves them and
// the ops to the library, and its registration, are in cuda_backend.cpp.
//
// Everything created here (streams, pools, pinned buffers) lives until the process ends and is
// never destroyed: tensors held in static objects may be released after main returns, and must
// still find their pool.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "cuda_common.hpp"
#include "cuda_ops.hpp"
#include "diffprobe_cuda.hpp"

namespace diffprobe::cuda {
namespace {

constexpr int kMaxDevices = 64;

// Same buckets as the CPU CachingAllocator: 4 KiB steps up to 1 MiB, then 1/8 of the next power
// of two, so a block serves requests up to ~12% smaller.
std::size_t bucket_size(std::size_t bytes) {
  const auto round_up = [](std::size_t n, std::size_t a) { return (n + a - 1) / a * a; };
  if (bytes <= (1u << 20)) return round_up(bytes == 0 ? 1 : bytes, 4096);
  std::size_t p = 1;
  while (p < bytes) p <<= 1;
  return round_up(bytes, p / 8);
}

// Size-bucketed cache of device blocks: after the first pass at a shape no op calls cudaMalloc.
class DevicePool final : public Allocator {
 public:
  explicit DevicePool(int index) : index_(index) {}

  void* allocate(std::size_t bytes) override {
    const std::size_t size = bucket_size(bytes);
    {
      std::lock_guard lock(mu_);
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 4) {
        void* p = it->second;
        take(p, it->first);
        free_.erase(it);
        return p;
      }
    }
    DeviceGuard guard(index_);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {  // give the cache back and try once more
      (void)cudaGetLastError();
      release_cached();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw DeviceError("cuda allocator", "cudaMalloc of " + std::to_string(size) + " bytes on cuda:" +
                                              std::to_string(index_) + " failed: " + cudaGetErrorString(e));
    }
    std::lock_guard lock(mu_);
    take(p, size);
    reserved_ += size;
    ++mallocs_;
    return p;
  }

  void deallocate(void* p, std::size_t) noexcept override {
    if (!p) return;
    std::lock_guard lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours: ignore rather than corrupt the cache
    in_use_ -= it->second;
    free_.emplace(it->second, p);
    live_.erase(it);
  }

  Device device() const noexcept override { return Device::cuda(index_); }

  void release_cached() noexcept {
    std::lock_guard lock(mu_);
    int previous = -1;
    (void)cudaGetDevice(&previous);
    (void)cudaSetDevice(index_);
    for (auto& [size, p] : free_) {
      (void)cudaFree(p);  // synchronises the device: pending work on these blocks is done
      reserved_ -= size;
    }
    free_.clear();
    if (previous >= 0) (void)cudaSetDevice(previous);
  }

  PoolStats stats() const {
    std::lock_guard lock(mu_);
    return PoolStats{in_use_, peak_, reserved_, mallocs_};
  }

 private:
  void take(void* p, std::size_t size) {
    live_.emplace(p, size);
    in_use_ += size;
    peak_ = std::max(peak_, in_use_);
  }

  int index_;
  mutable std::mutex mu_;
  std::multimap<std::size_t, void*> free_;
  std::unordered_map<void*, std::size_t> live_;
  std::size_t in_use_ = 0, peak_ = 0, reserved_ = 0, mallocs_ = 0;
};

// Two pinned buffers used alternately: the host copies chunk k into one while the DMA engine moves
// chunk k - 1 out of the other (and the reverse for copies to the host). Pageable copies would
// serialise both steps through the driver's own small staging area.
class Stager {
 public:
  static constexpr std::size_t kChunk = std::size_t{4} << 20;
  static constexpr std::size_t kMinStaged = std::size_t{1} << 20;  // smaller copies go direct

  void to_device(char* dst, const char* src, std::size_t bytes, cudaStream_t s) {
    std::lock_guard lock(mu_);
    if (bytes < kMinStaged || !ready()) {
      check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "copy to device");
      return;
    }
    for (std::size_t off = 0, k = 0; off < bytes; ++k) {
      const std::size_t len = std::min(kChunk, bytes - off), b = k & 1;
      check(cudaEventSynchronize(ev_[b]), "copy to device");  // the DMA out of this buffer is done
      std::memcpy(buf_[b], src + off, len);
      check(cudaMemcpyAsync(dst + off, buf_[b], len, cudaMemcpyHostToDevice, s), "copy to device");
      check(cudaEventRecord(ev_[b], s), "copy to device");
      off += len;
    }
    // Returning here is safe: the source was fully read, and later uses of dst are stream-ordered.
  }

  void to_host(char* dst, const char* src, std::size_t bytes, cudaStream_t s) {
    std::lock_guard lock(mu_);
    if (bytes < kMinStaged || !ready()) {
      check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "copy to host");
      check(cudaStreamSynchronize(s), "copy to host");
      return;
    }
    const std::size_t chunks = (bytes + kChunk - 1) / kChunk;
    const auto issue = [&](std::size_t k) {
      const std::size_t off = k * kChunk, len = std::min(kChunk, bytes - off);
      check(cudaMemcpyAsync(buf_[k & 1], src + off, len, cudaMemcpyDeviceToHost, s), "copy to host");
      check(cudaEventRecord(ev_[k & 1], s), "copy to host");
    };
    issue(0);
    for (std::size_t k = 0; k < chunks; ++k) {
      if (k + 1 < chunks) issue(k + 1);  // its buffer held chunk k - 1, already copied out
      check(cudaEventSynchronize(ev_[k & 1]), "copy to host");
      const std::size_t off = k * kChunk;
      std::memcpy(dst + off, buf_[k & 1], std::min(kChunk, bytes - off));
    }
  }

 private:
  // Pinned memory is a limited resource: without it, copies fall back to pageable ones.
  bool ready() {
    if (tried_) return ok_;
    tried_ = true;
    ok_ = true;
    for (int b = 0; b < 2 && ok_; ++b) {
      ok_ = cudaHostAlloc(&buf_[b], kChunk, cudaHostAllocPortable) == cudaSuccess &&
            cudaEventCreateWithFlags(&ev_[b], cudaEventDisableTiming) == cudaSuccess;
    }
    if (!ok_) (void)cudaGetLastError();
    return ok_;
  }

  std::mutex mu_;
  bool tried_ = false, ok_ = false;
  void* buf_[2] = {nullptr, nullptr};
  cudaEvent_t ev_[2] = {nullptr, nullptr};
};

struct DeviceState {
  cudaStream_t stream = nullptr;
  DevicePool pool;
  Stager stager;
  explicit DeviceState(int index) : pool(index) {}
};

std::array<std::atomic<DeviceState*>, kMaxDevices>& states() {
  static std::array<std::atomic<DeviceState*>, kMaxDevices> s{};
  return s;
}

DeviceState& state(int index) {
  require_device(index, "cuda");
  auto& slot = states()[static_cast<std::size_t>(index)];
  if (DeviceState* s = slot.load(std::memory_order_acquire)) return *s;
  static std::mutex mu;
  std::lock_guard lock(mu);
  if (DeviceState* s = slot.load(std::memory_order_acquire)) return *s;
  auto* s = new DeviceState(index);  // never freed: see the top of the file
  DeviceGuard guard(index);
  check(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "stream creation");
  slot.store(s, std::memory_order_release);
  return *s;
}

}  // namespace

// ---- copies (cuda_common.hpp) -------------------------------------------------------------------

void copy_from_host(void* dst, int index, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  DeviceState& s = state(index);
  DeviceGuard guard(index);
  s.stager.to_device(static_cast<char*>(dst), static_cast<const char*>(src), bytes, s.stream);
}

void copy_to_host(void* dst, const void* src, int index, std::size_t bytes) {
  if (bytes == 0) return;
  DeviceState& s = state(index);
  DeviceGuard guard(index);
  s.stager.to_host(static_cast<char*>(dst), static_cast<const char*>(src), bytes, s.stream);
}

void copy_on_device(void* dst, const void* src, int index, std::size_t bytes) {
  if (bytes == 0) return;
  DeviceState& s = state(index);
  DeviceGuard guard(index);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s.stream), "device copy");
}

// ---- cuda_common.hpp --------------------------------------------------------------------------

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw DeviceError(std::string("cuda ") + what,
                    std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
}

int device_count() noexcept {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return std::min(n, kMaxDevices);
  }();
  return count;
}

void require_device(int index, const char* where) {
  const int n = device_count();
  if (n == 0) throw DeviceError(where, "no CUDA device is visible (no GPU, or no driver)");
  if (index < 0 || index >= n)
    throw DeviceError(where, "device cuda:" + std::to_string(index) + " does not exist (" +
                                 std::to_string(n) + " visible)");
}

cudaStream_t stream(int index) { return state(index).stream; }
Allocator& pool(int index) { return state(index).pool; }

DeviceGuard::DeviceGuard(int index) {
  int current = -1;
  check(cudaGetDevice(&current), "cudaGetDevice");
  if (current != index) {
    check(cudaSetDevice(index), "cudaSetDevice");
    previous_ = current;
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

Scratch::Scratch(int device, std::size_t bytes) : a_(pool(device)), bytes_(bytes), p_(a_.allocate(bytes)) {}
Scratch::~Scratch() { a_.deallocate(p_, bytes_); }

// ---- diffprobe_cuda.hpp -----------------------------------------------------------------------

void synchronize(int device) {
  DeviceState& s = state(device);
  DeviceGuard guard(device);
  check(cudaStreamSynchronize(s.stream), "synchronize");
}

PoolStats pool_stats(int device) {
  if (device < 0 || device >= device_count()) return {};
  DeviceState* s = states()[static_cast<std::size_t>(device)].load(std::memory_order_acquire);
  return s ? s->pool.stats() : PoolStats{};
}

void release_cached(int device) {
  if (device < 0 || device >= device_count()) return;
  if (DeviceState* s = states()[static_cast<std::size_t>(device)].load(std::memory_order_acquire))
    s->pool.release_cached();
}

}  // namespace diffprobe::cuda
