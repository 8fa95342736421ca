#pragma once
// Logical shapes (always in NCHW order for images) and physical layouts.
#include <array>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace diffprobe {

/// A tensor's logical shape, up to 8 dimensions. Image tensors are [N, C, H, W] whatever
/// their physical layout.
class Shape {
 public:
  static constexpr int kMaxRank = 8;
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);
  explicit Shape(std::span<const std::int64_t> dims);
  explicit Shape(const std::vector<std::int64_t>& dims) : Shape(std::span<const std::int64_t>(dims)) {}

  int rank() const noexcept { return rank_; }
  std::int64_t operator[](int i) const noexcept { return dims_[static_cast<std::size_t>(i)]; }
  std::int64_t& operator[](int i) noexcept { return dims_[static_cast<std::size_t>(i)]; }
  /// Dimension i, negative counts from the back. Throws ArgumentError when out of range.
  std::int64_t dim(int i) const;
  std::int64_t numel() const noexcept;
  std::span<const std::int64_t> dims() const noexcept {
    return {dims_.data(), static_cast<std::size_t>(rank_)};
  }
  std::vector<std::int64_t> vec() const { return {dims_.begin(), dims_.begin() + rank_}; }
  std::string str() const;  // "[2, 3, 32, 32]"

  friend bool operator==(const Shape& a, const Shape& b) noexcept;
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

 private:
  std::array<std::int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

/// Physical order of a rank-4 tensor's elements. Everything else is row-major ("Contiguous").
/// NHWC is what oneDNN's fast convolution paths and our norm/attention kernels want, so
/// activations stay NHWC end to end; weights and files are NCHW (PyTorch's order).
enum class Layout : std::uint8_t { Contiguous, NHWC };

inline const char* layout_name(Layout l) noexcept { return l == Layout::NHWC ? "NHWC" : "NCHW"; }

}  // namespace diffprobe
