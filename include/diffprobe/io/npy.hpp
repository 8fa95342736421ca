#pragma once
// NumPy .npy files (format 1.0-3.0), little-endian f32, f16, f64 (converted to f32 on load),
// i32, i64, u8 (converted to i32); C order (Fortran order is converted).
#include <filesystem>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::io {

Tensor load_npy(const std::filesystem::path& path);
/// Writes a CPU tensor in logical (NCHW, C-order) order. f32, f16, i32, i64.
void save_npy(const std::filesystem::path& path, const Tensor& t);

}  // namespace diffprobe::io
