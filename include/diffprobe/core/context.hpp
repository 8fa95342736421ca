#pragma once
// What an op needs besides its operands: where to run, with how many threads, in which
// precision, and where to take memory from.
#include "diffprobe/core/allocator.hpp"
#include "diffprobe/core/device.hpp"
#include "diffprobe/core/dtype.hpp"

namespace diffprobe {

/// Compute precision of convolutions and matmuls. Norm statistics, softmax and accumulation
/// stay fp32 in every mode. INT8 (CPU): convolutions with s8 activations (one scale per image or
/// a calibrated one, Conv2d::set_int8_input) and s8 weights (one scale per output channel), int32
/// accumulation; every other matmul as BF16.
enum class Precision : std::uint8_t { FP32, BF16, FP16, INT8 };

const char* precision_name(Precision p) noexcept;
/// "fp32" | "bf16" | "fp16" | "int8"; ArgumentError otherwise.
Precision parse_precision(const char* text);

struct ExecContext {
  Device device = Device::cpu();
  int threads = 0;  // <= 0: default_threads()
  Precision precision = Precision::FP32;
  Allocator* allocator = nullptr;  // nullptr: the device's plain allocator
  /// The dtype the ops write activations in (convolutions, norms, attention, the small image ops):
  /// F32, or BF16 on the CPU (half the memory traffic between ops; the ops read either dtype and
  /// compute in fp32). Linear layers, adaptive pooling and the timestep embedding write f32.
  /// UNet::forward sets BF16 itself for the reduced precisions on the CPU (docs/model_numerics.md).
  DType activations = DType::F32;
};

}  // namespace diffprobe
