#pragma once
// The tensor core: a dtype, a device, a logical shape, a physical layout, and memory that is
// either owned (through an Allocator) or a view of someone else's (a memory-mapped file,
// another tensor). Tensors are cheap handles: copying one shares the memory.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "diffprobe/core/allocator.hpp"
#include "diffprobe/core/device.hpp"
#include "diffprobe/core/dtype.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/core/shape.hpp"

namespace diffprobe {

/// A block of memory shared by tensors. The deleter runs when the last tensor lets go.
class Storage {
 public:
  /// owned: the memory was allocated for this storage (false for views of memory owned elsewhere).
  Storage(void* data, std::size_t bytes, Device device, std::function<void(void*)> deleter, bool owned = true)
      : data_(data), bytes_(bytes), device_(device), deleter_(std::move(deleter)), owned_(owned) {}
  ~Storage() {
    if (deleter_) deleter_(data_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const noexcept { return data_; }
  std::size_t bytes() const noexcept { return bytes_; }
  Device device() const noexcept { return device_; }
  bool owns_memory() const noexcept { return owned_; }

 private:
  void* data_;
  std::size_t bytes_;
  Device device_;
  std::function<void(void*)> deleter_;
  bool owned_;
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() == false

  /// New uninitialised tensor. NHWC needs rank 4.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Layout layout = Layout::Contiguous,
                      Device device = Device::cpu(), Allocator* alloc = nullptr);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Layout layout = Layout::Contiguous,
                      Device device = Device::cpu(), Allocator* alloc = nullptr);
  /// Copies `values` (row-major in the logical shape) into a new CPU f32 tensor.
  static Tensor from_vector(const Shape& shape, std::span<const float> values,
                            Layout layout = Layout::Contiguous);
  /// Wraps memory owned elsewhere; `keep_alive` (optional) is held as long as the tensor lives.
  static Tensor view_of(void* data, const Shape& shape, DType dtype, Layout layout = Layout::Contiguous,
                        Device device = Device::cpu(), std::shared_ptr<void> keep_alive = nullptr);

  bool defined() const noexcept { return storage_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  int rank() const noexcept { return shape_.rank(); }
  std::int64_t dim(int i) const { return shape_.dim(i); }
  std::int64_t numel() const noexcept { return shape_.numel(); }
  DType dtype() const noexcept { return dtype_; }
  Layout layout() const noexcept { return layout_; }
  Device device() const noexcept { return storage_ ? storage_->device() : Device::cpu(); }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  const std::shared_ptr<Storage>& storage() const noexcept { return storage_; }
  std::size_t byte_offset() const noexcept { return offset_; }

  void* raw() const noexcept { return static_cast<char*>(storage_->data()) + offset_; }
  /// Typed pointer; throws DTypeError when T does not match (uint16_t serves f16 and bf16).
  template <class T> T* data() const;

  /// Samples [begin, end) of dim 0, sharing memory (valid for both layouts).
  Tensor slice_batch(std::int64_t begin, std::int64_t end) const;
  /// Same memory, new logical shape (Contiguous layout only; numel must match).
  Tensor reshape(const Shape& shape) const;

  /// A deep copy in the requested layout / dtype / device.
  Tensor to_layout(Layout layout, Allocator* alloc = nullptr) const;
  Tensor to_dtype(DType dtype, Allocator* alloc = nullptr) const;
  Tensor to_device(Device device) const;
  Tensor clone(Allocator* alloc = nullptr) const;

  /// Element i of the logical row-major order, converted to double (CPU only; for tests and tools).
  double item_at(std::int64_t logical_index) const;
  /// All elements in logical row-major order as float (CPU; any float dtype and layout).
  std::vector<float> to_vector() const;
  /// Physical offset (in elements) of logical index (n, c, h, w) of a rank-4 tensor.
  std::int64_t offset4(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) const noexcept {
    if (layout_ == Layout::NHWC) return ((n * shape_[2] + h) * shape_[3] + w) * shape_[1] + c;
    return ((n * shape_[1] + c) * shape_[2] + h) * shape_[3] + w;
  }

  std::string str() const;  // "f32[2, 3, 32, 32] NHWC cpu"

 private:
  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;  // bytes into storage
  Shape shape_;
  DType dtype_ = DType::F32;
  Layout layout_ = Layout::Contiguous;
};

template <class T> T* Tensor::data() const {
  if (!defined()) throw ArgumentError("Tensor::data", "the tensor is undefined");
  constexpr bool is16 = std::is_same_v<T, std::uint16_t> || std::is_same_v<T, const std::uint16_t>;
  using U = std::remove_const_t<T>;
  const bool ok =
      is16 ? (dtype_ == DType::F16 || dtype_ == DType::BF16)
           : (dtype_size(dtype_) == sizeof(U) && ((std::is_same_v<U, float> && dtype_ == DType::F32) ||
                                                  (std::is_same_v<U, std::int32_t> && dtype_ == DType::I32) ||
                                                  (std::is_same_v<U, std::int64_t> && dtype_ == DType::I64)));
  if (!ok)
    throw DTypeError("Tensor::data",
                     "requested element type does not match tensor dtype " + std::string(dtype_name(dtype_)));
  return static_cast<T*>(raw());
}

}  // namespace diffprobe
