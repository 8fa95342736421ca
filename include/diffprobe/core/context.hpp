#pragma once
// What an op needs besides its operands: where to run, with how many threads, in which
// precision, and where to take memory from.
#include "diffprobe/core/allocator.hpp"
#include "diffprobe/core/device.hpp"

namespace diffprobe {

/// Compute precision of convolutions and matmuls. Norm statistics, softmax and accumulation
/// stay fp32 in every mode.
enum class Precision : std::uint8_t { FP32, BF16, FP16 };

const char* precision_name(Precision p) noexcept;
/// "fp32" | "bf16" | "fp16"; ArgumentError otherwise.
Precision parse_precision(const char* text);

struct ExecContext {
  Device device = Device::cpu();
  int threads = 0;  // <= 0: default_threads()
  Precision precision = Precision::FP32;
  Allocator* allocator = nullptr;  // nullptr: the device's plain allocator
};

}  // namespace diffprobe
