#include "io/bytes.hpp"

#include <vector>

namespace diffprobe::io::detail {

std::size_t src_type_size(SrcType t) noexcept {
  switch (t) {
    case SrcType::F64:
    case SrcType::I64: return 8;
    case SrcType::F32:
    case SrcType::I32: return 4;
    case SrcType::F16:
    case SrcType::BF16:
    case SrcType::I16:
    case SrcType::U16: return 2;
    case SrcType::I8:
    case SrcType::U8:
    case SrcType::Bool: return 1;
  }
  return 0;
}

DType loaded_dtype(SrcType t) noexcept {
  switch (t) {
    case SrcType::F32:
    case SrcType::F64: return DType::F32;
    case SrcType::F16: return DType::F16;
    case SrcType::BF16: return DType::BF16;
    case SrcType::I64: return DType::I64;
    case SrcType::I32:
    case SrcType::I16:
    case SrcType::I8:
    case SrcType::U8:
    case SrcType::U16:
    case SrcType::Bool: return DType::I32;
  }
  return DType::F32;
}

namespace {

// Converts one element at p into the loaded dtype at q.
inline void convert_one(const std::uint8_t* p, SrcType t, std::uint8_t* q) noexcept {
  switch (t) {
    case SrcType::F32:
    case SrcType::I32: std::memcpy(q, p, 4); break;
    case SrcType::F16:
    case SrcType::BF16: std::memcpy(q, p, 2); break;
    case SrcType::I64: std::memcpy(q, p, 8); break;
    case SrcType::F64: {
      const float f = static_cast<float>(load_le<double>(p));
      std::memcpy(q, &f, 4);
      break;
    }
    case SrcType::I16: store_le<std::int32_t>(q, load_le<std::int16_t>(p)); break;
    case SrcType::U16: store_le<std::int32_t>(q, load_le<std::uint16_t>(p)); break;
    case SrcType::I8: store_le<std::int32_t>(q, static_cast<std::int8_t>(*p)); break;
    case SrcType::U8: store_le<std::int32_t>(q, *p); break;
    case SrcType::Bool: store_le<std::int32_t>(q, *p != 0 ? 1 : 0); break;
  }
}

}  // namespace

void gather_strided(const std::uint8_t* src, SrcType type, std::span<const std::int64_t> size_in,
                    std::span<const std::int64_t> stride_in, void* dst) {
  const std::size_t es = src_type_size(type);
  const std::size_t os = dtype_size(loaded_dtype(type));
  auto* out = static_cast<std::uint8_t*>(dst);
  std::int64_t total = 1;
  for (std::int64_t s : size_in) total *= s;
  if (total == 0) return;
  // Drop size-1 dimensions and merge neighbours that are contiguous with each other, so a
  // contiguous tensor becomes one run (one memcpy) and a transpose a 2-D walk.
  std::vector<std::int64_t> size, stride;
  for (std::size_t d = 0; d < size_in.size(); ++d) {
    if (size_in[d] == 1) continue;
    if (!size.empty() && stride.back() == stride_in[d] * size_in[d]) {
      size.back() *= size_in[d];
      stride.back() = stride_in[d];
    } else {
      size.push_back(size_in[d]);
      stride.push_back(stride_in[d]);
    }
  }
  if (size.empty()) {  // a single element
    size.push_back(1);
    stride.push_back(1);
  }
  const std::size_t rank = size.size();
  // Odometer over all but the last dimension; the innermost loop walks the last one.
  std::vector<std::int64_t> idx(rank, 0);
  const std::int64_t inner = size[rank - 1], inner_stride = stride[rank - 1];
  const bool plain_inner = inner_stride == 1 && is_native(type);
  std::int64_t base = 0;  // element offset of idx[0..rank-2], last index 0
  for (;;) {
    const std::uint8_t* p = src + static_cast<std::size_t>(base) * es;
    if (plain_inner) {
      std::memcpy(out, p, static_cast<std::size_t>(inner) * es);
      out += static_cast<std::size_t>(inner) * os;
    } else {
      for (std::int64_t i = 0; i < inner; ++i, out += os)
        convert_one(p + static_cast<std::size_t>(i * inner_stride) * es, type, out);
    }
    // Advance the odometer over dimensions rank-2 .. 0.
    std::size_t d = rank - 1;
    for (;;) {
      if (d == 0) return;
      --d;
      base += stride[d];
      if (++idx[d] < size[d]) break;
      base -= stride[d] * size[d];
      idx[d] = 0;
    }
  }
}

}  // namespace diffprobe::io::detail
