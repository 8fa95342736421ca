#include "diffprobe/core/shape.hpp"

#include "diffprobe/core/error.hpp"

namespace diffprobe {

Shape::Shape(std::initializer_list<std::int64_t> dims)
    : Shape(std::span<const std::int64_t>(dims.begin(), dims.size())) {}

Shape::Shape(std::span<const std::int64_t> dims) {
  if (dims.size() > kMaxRank)
    throw ShapeError("Shape", "rank " + std::to_string(dims.size()) + " exceeds the maximum of 8");
  // The product of the non-zero dimensions stays below 2^62, so that numel() and every stride
  // (a product of trailing dimensions) fit in int64 even for an empty tensor such as
  // (0, 2^32, 2^32), which a file could declare.
  constexpr std::int64_t kMaxElements = std::int64_t{1} << 62;
  std::int64_t product = 1;
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 0)
      throw ShapeError("Shape",
                       "dimension " + std::to_string(i) + " is negative (" + std::to_string(dims[i]) + ")");
    if (dims[i] > 0 && (__builtin_mul_overflow(product, dims[i], &product) || product > kMaxElements))
      throw ShapeError("Shape", "dimensions that multiply to more than 2^62 elements (dimension " +
                                    std::to_string(i) + " is " + std::to_string(dims[i]) + ")");
    dims_[i] = dims[i];
  }
  rank_ = static_cast<int>(dims.size());
}

std::int64_t Shape::dim(int i) const {
  const int j = i < 0 ? i + rank_ : i;
  if (j < 0 || j >= rank_)
    throw ArgumentError("Shape::dim", "dimension " + std::to_string(i) + " out of range for " + str());
  return dims_[static_cast<std::size_t>(j)];
}

std::int64_t Shape::numel() const noexcept {
  std::int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
  return n;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank_; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[static_cast<std::size_t>(i)]);
  }
  return s + "]";
}

bool operator==(const Shape& a, const Shape& b) noexcept {
  if (a.rank_ != b.rank_) return false;
  for (int i = 0; i < a.rank_; ++i)
    if (a.dims_[static_cast<std::size_t>(i)] != b.dims_[static_cast<std::size_t>(i)]) return false;
  return true;
}

}  // namespace diffprobe
