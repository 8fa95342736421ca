#pragma once
// Little helpers shared by the file readers: unaligned little-endian loads (through memcpy, so
// no misaligned access), overflow-checked size arithmetic and strided element copies.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::io::detail {

template <class T> T load_le(const std::uint8_t* p) noexcept {
  static_assert(std::is_trivially_copyable_v<T>);
  T v;
  std::memcpy(&v, p, sizeof(T));  // the library only targets little-endian hosts
  return v;
}

template <class T> T load_be(const std::uint8_t* p) noexcept {
  std::make_unsigned_t<T> u = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) u = static_cast<decltype(u)>((u << 8) | p[i]);
  return static_cast<T>(u);
}

template <class T> void store_le(std::uint8_t* p, T v) noexcept { std::memcpy(p, &v, sizeof(T)); }

/// a * b, or false when it overflows int64 (both must be >= 0).
inline bool checked_mul(std::int64_t a, std::int64_t b, std::int64_t& out) noexcept {
  return !__builtin_mul_overflow(a, b, &out);
}
inline bool checked_add(std::int64_t a, std::int64_t b, std::int64_t& out) noexcept {
  return !__builtin_add_overflow(a, b, &out);
}

/// Source element types a loader can convert from (wider than DType: f64 and small integers).
enum class SrcType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, U16, Bool };

std::size_t src_type_size(SrcType t) noexcept;
/// The DType a source type is loaded as: f64 -> f32, small integers -> i32, others unchanged.
DType loaded_dtype(SrcType t) noexcept;
/// True when the source bytes can be used as-is (no conversion).
inline bool is_native(SrcType t) noexcept {
  return t == SrcType::F32 || t == SrcType::F16 || t == SrcType::BF16 || t == SrcType::I64 ||
         t == SrcType::I32;
}

/// Copies a strided view of `src` (element strides, no bounds checks: callers validated them)
/// into `dst`, a dense row-major buffer of loaded_dtype(type), converting on the way.
void gather_strided(const std::uint8_t* src, SrcType type, std::span<const std::int64_t> size,
                    std::span<const std::int64_t> stride, void* dst);

}  // namespace diffprobe::io::detail
