#pragma once
// Where a tensor lives. The op layer dispatches on this; callers never branch on it.
#include <cstdint>
#include <string>
#include <string_view>

namespace diffprobe {

enum class DeviceType : std::uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::CPU, 0}; }
  static constexpr Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  constexpr bool is_cpu() const { return type == DeviceType::CPU; }
  constexpr bool is_cuda() const { return type == DeviceType::CUDA; }
  friend constexpr bool operator==(Device a, Device b) {
    return a.type == b.type && (a.type == DeviceType::CPU || a.index == b.index);
  }
  std::string str() const;  // "cpu", "cuda:0"
};

/// Parses "cpu", "cuda", "cuda:N". Throws ArgumentError otherwise.
Device parse_device(std::string_view text);

/// True when this build has the CUDA backend and at least one GPU is visible.
bool cuda_available() noexcept;
int cuda_device_count() noexcept;

}  // namespace diffprobe
