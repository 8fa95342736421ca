#pragma once
// What the CUDA backend offers beyond the op layer: waiting for a device, and its memory pool's
// statistics. Targets that link diffprobe::cuda see this header and the definition
// DIFFPROBE_HAVE_CUDA_BACKEND=1 (the benchmarks time kernels with it).
//
// Nothing here is needed to use the backend: linking diffprobe::cuda registers it (the target's
// link options keep its registration object in the link; see docs/cuda.md).
#include <cstddef>

namespace diffprobe::cuda {

/// Blocks until all work queued on the device's stream is done (DeviceError on a failed kernel).
void synchronize(int device = 0);

struct PoolStats {
  std::size_t bytes_in_use = 0;
  std::size_t peak_bytes_in_use = 0;
  std::size_t bytes_reserved = 0;      // in use + cached
  std::size_t device_allocations = 0;  // how often cudaMalloc was called
};
/// Statistics of the device's memory pool (all zero before its first allocation).
PoolStats pool_stats(int device = 0);
/// Returns the pool's cached blocks to the driver.
void release_cached(int device = 0);

/// Registers the CUDA backend with the library. Linking diffprobe::cuda already does this at
/// static initialisation; the explicit call is for programs that link the library by other means
/// (or want registration to be visible in their code). Idempotent, touches no CUDA API.
void register_backend();

}  // namespace diffprobe::cuda

extern "C" {
/// Referenced by the target's link options so a static link keeps the registration object.
void diffprobe_cuda_register(void);
}
