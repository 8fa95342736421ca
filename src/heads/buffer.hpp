#pragma once
// The heads' internal activation type: a row-major array with a shape. Layers are templated on
// the scalar (float for training, double for the gradient checks), which diffprobe::Tensor is not.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace diffprobe::heads {

inline std::int64_t numel_of(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<std::int64_t>& shape);

template <class T> struct Buf {
  std::vector<std::int64_t> shape;
  std::vector<T> v;

  Buf() = default;
  explicit Buf(std::vector<std::int64_t> s)
      : shape(std::move(s)), v(static_cast<std::size_t>(numel_of(shape))) {}
  Buf(std::vector<std::int64_t> s, std::vector<T> values) : shape(std::move(s)), v(std::move(values)) {}

  std::int64_t numel() const noexcept { return static_cast<std::int64_t>(v.size()); }
  int rank() const noexcept { return static_cast<int>(shape.size()); }
  std::int64_t dim(int i) const { return shape[static_cast<std::size_t>(i < 0 ? i + rank() : i)]; }
  T* data() noexcept { return v.data(); }
  const T* data() const noexcept { return v.data(); }
};

}  // namespace diffprobe::heads
