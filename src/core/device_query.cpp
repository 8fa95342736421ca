// Device queries, answered by the registered backends (src/core/device_backend.hpp).
#include "device_backend.hpp"
#include "diffprobe/core/device.hpp"

namespace diffprobe {

int cuda_device_count() noexcept {
  const detail::DeviceBackend* cuda = detail::device_backend(DeviceType::CUDA);
  return cuda ? cuda->device_count() : 0;
}

bool cuda_available() noexcept { return cuda_device_count() > 0; }

}  // namespace diffprobe
