// The one backend registry: which Backend object serves each device type (memory, copies, ops).
#include <array>
#include <atomic>
#include <string>

#include "backend.hpp"

namespace diffprobe::ops::detail {

namespace {

constexpr std::size_t kDeviceTypes = 2;  // DeviceType::CPU, DeviceType::CUDA

std::array<std::atomic<Backend*>, kDeviceTypes>& registry() {
  static std::array<std::atomic<Backend*>, kDeviceTypes> r{&cpu_backend(), nullptr};
  return r;
}

std::size_t slot_of(DeviceType type) { return static_cast<std::size_t>(type); }

}  // namespace

Backend* registry_slot(DeviceType type) noexcept {
  const std::size_t i = slot_of(type);
  return i < kDeviceTypes ? registry()[i].load(std::memory_order_acquire) : nullptr;
}

const char* op_name(OpKind op) noexcept {
  switch (op) {
    case OpKind::Conv2d: return "conv2d";
    case OpKind::Linear: return "linear";
    case OpKind::GroupNorm: return "group_norm";
    case OpKind::GroupNormAvgPool: return "group_norm with a fused 2x2 average pool";
    case OpKind::Attention: return "attention";
    case OpKind::Silu: return "silu";
    case OpKind::Add: return "add";
    case OpKind::AvgPool2x2: return "avg_pool2x2";
    case OpKind::UpsampleNearest2x: return "upsample_nearest2x";
    case OpKind::ConcatChannels: return "concat_channels";
    case OpKind::AdaptivePool2d: return "adaptive_pool2d";
    case OpKind::TimestepEmbedding: return "timestep_embedding";
  }
  return "?";
}

void register_backend(DeviceType type, Backend& backend) {
  const std::size_t i = slot_of(type);
  if (i >= kDeviceTypes) throw ArgumentError("register_backend", "unknown device type");
  Backend* expected = nullptr;
  if (registry()[i].compare_exchange_strong(expected, &backend) || expected == &backend) return;
  throw ArgumentError("register_backend",
                      std::string("a '") + expected->name() + "' backend already serves this device type");
}

Backend& backend_for(Device device, const char* where) {
  Backend* b = registry_slot(device.type);
  if (!b) throw DeviceError(where, "no backend for " + device.str() + " in this build (built without CUDA)");
  return *b;
}

Backend& backend_for(Device device, OpKind op, const char* where) {
  Backend& b = backend_for(device, where);
  if (!b.supports(op))
    throw UnsupportedError(where, std::string("the ") + b.name() + " backend has no " + op_name(op));
  return b;
}

}  // namespace diffprobe::ops::detail

diffprobe::detail::DeviceBackend* diffprobe::detail::device_backend(DeviceType type) noexcept {
  using ops::detail::registry_slot;
  return registry_slot(type);
}
