// Device queries, answered through the CUDA hooks when the CUDA backend is linked in.
#include "device_hooks.hpp"
#include "diffprobe/core/device.hpp"

namespace diffprobe {

int cuda_device_count() noexcept {
  auto& hooks = detail::cuda_hooks();
  return hooks.device_count ? hooks.device_count() : 0;
}

bool cuda_available() noexcept { return cuda_device_count() > 0; }

}  // namespace diffprobe
