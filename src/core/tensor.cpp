#include "diffprobe/core/tensor.hpp"

#include <cstring>
#include <string>

#include "device_backend.hpp"

namespace diffprobe {
namespace {

void check_layout(const Shape& shape, Layout layout, const char* where) {
  if (layout == Layout::NHWC && shape.rank() != 4)
    throw ShapeError(where, "NHWC layout needs a rank-4 shape, got " + shape.str());
}

// Converts one element between dtypes through double (exact for every pair we support).
double load_as_double(const void* base, DType t, std::int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return half_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::I32: return static_cast<const std::int32_t*>(base)[i];
    case DType::I64: return static_cast<double>(static_cast<const std::int64_t*>(base)[i]);
  }
  return 0;
}

void store_from_double(void* base, DType t, std::int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::F16: static_cast<std::uint16_t*>(base)[i] = float_to_half(static_cast<float>(v)); break;
    case DType::BF16: static_cast<std::uint16_t*>(base)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::I32: static_cast<std::int32_t*>(base)[i] = static_cast<std::int32_t>(v); break;
    case DType::I64: static_cast<std::int64_t*>(base)[i] = static_cast<std::int64_t>(v); break;
  }
}

void require_cpu(const Tensor& t, const char* where) {
  if (!t.defined()) throw ArgumentError(where, "the tensor is undefined");
  if (!t.device().is_cpu()) throw DeviceError(where, "needs a CPU tensor, got one on " + t.device().str());
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Layout layout, Device device, Allocator* alloc) {
  check_layout(shape, layout, "Tensor::empty");
  Allocator& a = alloc ? *alloc : default_allocator(device);
  if (!(a.device() == device))
    throw DeviceError("Tensor::empty",
                      "allocator serves " + a.device().str() + ", tensor wants " + device.str());
  const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  void* p = a.allocate(bytes);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(p, bytes, device, [&a, bytes](void* q) { a.deallocate(q, bytes); });
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.layout_ = layout;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Layout layout, Device device, Allocator* alloc) {
  Tensor t = empty(shape, dtype, layout, device, alloc);
  if (device.is_cpu()) {
    std::memset(t.raw(), 0, t.nbytes());
  } else {
    Tensor host = zeros(shape, dtype, layout);
    detail::device_backend(device.type)->copy_from_host(t.raw(), device.index, host.raw(), t.nbytes());
  }
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, std::span<const float> values, Layout layout) {
  if (static_cast<std::int64_t>(values.size()) != shape.numel())
    throw ShapeError("Tensor::from_vector", std::to_string(values.size()) + " values for shape " +
                                                shape.str() + " (" + std::to_string(shape.numel()) +
                                                " elements)");
  Tensor t = empty(shape, DType::F32, Layout::Contiguous);
  if (!values.empty())
    std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));  // no memcpy(_, null, 0)
  return layout == Layout::Contiguous ? t : t.to_layout(layout);
}

Tensor Tensor::view_of(void* data, const Shape& shape, DType dtype, Layout layout, Device device,
                       std::shared_ptr<void> keep_alive) {
  check_layout(shape, layout, "Tensor::view_of");
  if (!data && shape.numel() > 0) throw ArgumentError("Tensor::view_of", "null data pointer");
  Tensor t;
  const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  t.storage_ = std::make_shared<Storage>(
      data, bytes, device, [keep = std::move(keep_alive)](void*) mutable { keep.reset(); }, /*owned=*/false);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.layout_ = layout;
  return t;
}

Tensor Tensor::slice_batch(std::int64_t begin, std::int64_t end) const {
  if (!defined()) throw ArgumentError("Tensor::slice_batch", "the tensor is undefined");
  if (rank() < 1) throw ShapeError("Tensor::slice_batch", "needs rank >= 1, got a scalar");
  if (begin < 0 || end > shape_[0] || begin > end)
    throw ArgumentError("Tensor::slice_batch", "range [" + std::to_string(begin) + ", " +
                                                   std::to_string(end) + ") outside [0, " +
                                                   std::to_string(shape_[0]) + ")");
  Tensor t = *this;
  const std::int64_t per = shape_[0] ? numel() / shape_[0] : 0;
  t.offset_ += static_cast<std::size_t>(begin * per) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (!defined()) throw ArgumentError("Tensor::reshape", "the tensor is undefined");
  if (layout_ != Layout::Contiguous)
    throw ShapeError("Tensor::reshape", "reshape needs a contiguous (NCHW) tensor, got NHWC " + shape_.str());
  if (shape.numel() != numel())
    throw ShapeError("Tensor::reshape", "cannot reshape " + shape_.str() + " to " + shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::to_layout(Layout layout, Allocator* alloc) const {
  require_cpu(*this, "Tensor::to_layout");
  check_layout(shape_, layout, "Tensor::to_layout");
  Tensor out = empty(shape_, dtype_, layout, Device::cpu(), alloc);
  if (layout == layout_ || rank() != 4) {
    std::memcpy(out.raw(), raw(), nbytes());
    return out;
  }
  const std::int64_t N = shape_[0], C = shape_[1], H = shape_[2], W = shape_[3];
  const std::size_t es = dtype_size(dtype_);
  const char* src = static_cast<const char*>(raw());
  char* dst = static_cast<char*>(out.raw());
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t w = 0; w < W; ++w)
          std::memcpy(dst + static_cast<std::size_t>(out.offset4(n, c, h, w)) * es,
                      src + static_cast<std::size_t>(offset4(n, c, h, w)) * es, es);
  return out;
}

Tensor Tensor::to_dtype(DType dtype, Allocator* alloc) const {
  require_cpu(*this, "Tensor::to_dtype");
  Tensor out = empty(shape_, dtype, layout_, Device::cpu(), alloc);
  if (dtype == dtype_) {
    std::memcpy(out.raw(), raw(), nbytes());
    return out;
  }
  const std::int64_t n = numel();
  if (dtype_ == DType::F32 && dtype == DType::F16) {
    const float* s = data<float>();
    auto* d = out.data<std::uint16_t>();
    for (std::int64_t i = 0; i < n; ++i) d[i] = float_to_half(s[i]);
  } else if (dtype_ == DType::F32 && dtype == DType::BF16) {
    const float* s = data<float>();
    auto* d = out.data<std::uint16_t>();
    for (std::int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
  } else {
    for (std::int64_t i = 0; i < n; ++i)
      store_from_double(out.raw(), dtype, i, load_as_double(raw(), dtype_, i));
  }
  return out;
}

Tensor Tensor::to_device(Device device) const {
  if (!defined()) throw ArgumentError("Tensor::to_device", "the tensor is undefined");
  const Device from = this->device();
  if (from == device) return clone();
  const Device other = from.is_cpu() ? device : from;  // the device that is not the host
  detail::DeviceBackend* backend = detail::device_backend(other.type);
  if (!backend)
    throw DeviceError("Tensor::to_device", "cannot move a tensor to " + device.str() +
                                               ": this build has no backend for " + other.str());
  if (!from.is_cpu() && !device.is_cpu())
    throw UnsupportedError("Tensor::to_device", "copies between two GPUs go through the host");
  Tensor out = empty(shape_, dtype_, layout_, device);
  if (from.is_cpu())
    backend->copy_from_host(out.raw(), device.index, raw(), nbytes());
  else
    backend->copy_to_host(out.raw(), raw(), from.index, nbytes());
  return out;
}

Tensor Tensor::clone(Allocator* alloc) const {
  if (!defined()) throw ArgumentError("Tensor::clone", "the tensor is undefined");
  if (device().is_cpu()) return to_dtype(dtype_, alloc);
  Tensor out = empty(shape_, dtype_, layout_, device(), alloc);
  detail::device_backend(device().type)->copy_on_device(out.raw(), raw(), device().index, nbytes());
  return out;
}

double Tensor::item_at(std::int64_t i) const {
  require_cpu(*this, "Tensor::item_at");
  if (i < 0 || i >= numel())
    throw ArgumentError("Tensor::item_at", "index " + std::to_string(i) + " outside " + shape_.str());
  std::int64_t phys = i;
  if (layout_ == Layout::NHWC) {
    const std::int64_t W = shape_[3], H = shape_[2], C = shape_[1];
    const std::int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    phys = offset4(n, c, h, w);
  }
  return load_as_double(raw(), dtype_, phys);
}

std::vector<float> Tensor::to_vector() const {
  require_cpu(*this, "Tensor::to_vector");
  const Tensor c = layout_ == Layout::Contiguous ? *this : to_layout(Layout::Contiguous);
  std::vector<float> v(static_cast<std::size_t>(numel()));
  if (v.empty()) return v;  // no memcpy from a possibly null pointer
  if (dtype_ == DType::F32) {
    std::memcpy(v.data(), c.raw(), v.size() * 4);
  } else {
    for (std::int64_t i = 0; i < numel(); ++i)
      v[static_cast<std::size_t>(i)] = static_cast<float>(load_as_double(c.raw(), dtype_, i));
  }
  return v;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + shape_.str() + " " + layout_name(layout_) + " " + device().str();
}

}  // namespace diffprobe
