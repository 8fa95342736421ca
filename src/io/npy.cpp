#include "diffprobe/io/npy.hpp"

#include <cctype>

#include "io/atomic_file.hpp"
#include "io/bytes.hpp"
#include "io/mapped_file.hpp"

namespace diffprobe::io {
namespace {

using detail::SrcType;

// The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  HeaderParser(std::string_view s, const std::string& where) : s_(s), where_(where) {}

  void parse(std::string& descr, bool& fortran, std::vector<std::int64_t>& shape) {
    bool has_descr = false, has_fortran = false, has_shape = false;
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = string_lit();
      expect(':');
      if (key == "descr") {
        descr = string_lit();
        has_descr = true;
      } else if (key == "fortran_order") {
        skip_ws();
        if (s_.substr(i_, 4) == "True") {
          fortran = true;
          i_ += 4;
        } else if (s_.substr(i_, 5) == "False") {
          fortran = false;
          i_ += 5;
        } else {
          fail("fortran_order is neither True nor False");
        }
        has_fortran = true;
      } else if (key == "shape") {
        expect('(');
        for (;;) {
          skip_ws();
          if (peek() == ')') break;
          shape.push_back(integer());
          if (shape.size() > static_cast<std::size_t>(Shape::kMaxRank)) fail("rank exceeds 8");
          skip_ws();
          if (peek() == ',') ++i_;
        }
        ++i_;
        has_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') ++i_;
    }
    if (!has_descr || !has_fortran || !has_shape) fail("header lacks descr, fortran_order or shape");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { throw FormatError(where_, "npy header: " + why); }
  char peek() const {
    if (i_ >= s_.size()) fail("ends early");
    return s_[i_];
  }
  void skip_ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string string_lit() {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const std::size_t end = s_.find(q, i_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(s_.substr(i_ + 1, end - i_ - 1));
    i_ = end + 1;
    return out;
  }
  std::int64_t integer() {
    std::int64_t v = 0;
    std::size_t digits = 0;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
      if (!detail::checked_mul(v, 10, v) || !detail::checked_add(v, s_[i_] - '0', v))
        fail("dimension overflows");
      ++i_;
      ++digits;
    }
    if (!digits) fail("expected a non-negative dimension");
    if (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2 longs
    return v;
  }

  std::string_view s_;
  std::size_t i_ = 0;
  const std::string& where_;
};

}  // namespace

Tensor load_npy(const std::filesystem::path& path) {
  const auto file = detail::MappedFile::open(path);
  const std::string& where = file->name();
  const std::uint8_t* d = file->data();
  const std::size_t size = file->size();
  static const char kMagic[] = "\x93NUMPY";
  if (size < 10 || std::memcmp(d, kMagic, 6) != 0) throw FormatError(where, "not an .npy file (bad magic)");
  const int major = d[6];
  std::size_t hlen, hstart;
  if (major == 1) {
    hlen = detail::load_le<std::uint16_t>(d + 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) throw FormatError(where, "npy file truncated in its header");
    hlen = detail::load_le<std::uint32_t>(d + 8);
    hstart = 12;
  } else {
    throw FormatError(where,
                      "unsupported npy format version " + std::to_string(major) + "." + std::to_string(d[7]));
  }
  if (hlen > size - hstart)
    throw FormatError(where, "npy header length " + std::to_string(hlen) + " exceeds the file");
  std::string descr;
  bool fortran = false;
  std::vector<std::int64_t> dims;
  HeaderParser(std::string_view(reinterpret_cast<const char*>(d + hstart), hlen), where)
      .parse(descr, fortran, dims);

  SrcType type;
  if (descr == "<f4")
    type = SrcType::F32;
  else if (descr == "<f2")
    type = SrcType::F16;
  else if (descr == "<f8")
    type = SrcType::F64;
  else if (descr == "<i4")
    type = SrcType::I32;
  else if (descr == "<i8")
    type = SrcType::I64;
  else if (descr == "|u1" || descr == "<u1")
    type = SrcType::U8;
  else
    throw FormatError(
        where, "unsupported npy dtype '" + descr + "' (f32, f16, f64, i32, i64 and u8 little-endian are)");

  std::int64_t numel = 1, bytes = 0;
  for (const std::int64_t v : dims)
    if (!detail::checked_mul(numel, v, numel)) throw FormatError(where, "npy shape is absurdly large");
  if (!detail::checked_mul(numel, static_cast<std::int64_t>(detail::src_type_size(type)), bytes) ||
      static_cast<std::uint64_t>(bytes) != size - hstart - hlen)
    throw FormatError(where, "npy data is " + std::to_string(size - hstart - hlen) +
                                 " bytes, shape and dtype need " + std::to_string(bytes));
  Shape shape;
  try {
    shape = Shape(std::span<const std::int64_t>(dims));
  } catch (const ShapeError& e) {
    throw FormatError(where, "npy shape: " + e.why());
  }
  Tensor t = Tensor::empty(shape, detail::loaded_dtype(type));
  // Fortran order: the data is the transpose, so read it with reversed (column-major) strides.
  std::vector<std::int64_t> stride(dims.size());
  std::int64_t s = 1;
  for (std::size_t j = 0; j < dims.size(); ++j) {
    const std::size_t k = fortran ? j : dims.size() - 1 - j;
    stride[k] = s;
    s *= dims[k];
  }
  detail::gather_strided(d + hstart + hlen, type, dims, stride, t.raw());
  return t;
}

void save_npy(const std::filesystem::path& path, const Tensor& t) {
  if (!t.defined()) throw ArgumentError("save_npy", "the tensor is undefined");
  const char* descr = nullptr;
  switch (t.dtype()) {
    case DType::F32: descr = "<f4"; break;
    case DType::F16: descr = "<f2"; break;
    case DType::I32: descr = "<i4"; break;
    case DType::I64: descr = "<i8"; break;
    case DType::BF16:
      throw DTypeError("save_npy",
                       "NumPy has no bfloat16; convert the tensor to f32 first (" + path.string() + ")");
  }
  Tensor c = t.device().is_cpu() ? t : t.to_device(Device::cpu());
  if (c.layout() != Layout::Contiguous) c = c.to_layout(Layout::Contiguous);
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < c.rank(); ++i)
    header += std::to_string(c.dim(i)) + (c.rank() == 1 ? "," : i + 1 < c.rank() ? ", " : "");
  header += "), }";
  // Version 1.0 (2-byte header length) unless the header is too long for it; the data starts
  // 64-byte aligned and the header ends with a newline, as NumPy writes them.
  const bool v2 = header.size() + 11 + 64 > 0xffff;
  const std::size_t prefix = v2 ? 12 : 10;
  header.append(63 - (prefix + header.size()) % 64, ' ');
  header += '\n';
  std::uint8_t pre[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<std::uint8_t>(v2 ? 2 : 1), 0};
  if (v2)
    detail::store_le<std::uint32_t>(pre + 8, static_cast<std::uint32_t>(header.size()));
  else
    detail::store_le<std::uint16_t>(pre + 8, static_cast<std::uint16_t>(header.size()));
  detail::AtomicFile f(path);
  f.write(pre, prefix);
  f.write(header.data(), header.size());
  f.write(c.raw(), c.nbytes());
  f.commit();
}

}  // namespace diffprobe::io
