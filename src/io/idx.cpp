#include "diffprobe/io/idx.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "io/bytes.hpp"

namespace diffprobe::io {
namespace {

// zlib's gz* functions read gzip and, transparently, plain files.
class GzFile {
 public:
  GzFile(const std::filesystem::path& path, const std::string& where) : where_(where) {
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) throw IoError(where, std::string("cannot open: ") + std::strerror(errno));
    gzbuffer(f_, 1 << 17);
  }
  ~GzFile() { gzclose(f_); }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads up to n bytes; returns how many were read (less only at the end of the data).
  std::size_t read(void* p, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, 1u << 30));
      const int r = gzread(f_, static_cast<char*>(p) + got, chunk);
      if (r < 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        throw FormatError(where_, std::string("corrupt gzip data: ") + (msg ? msg : "unknown error"));
      }
      if (r == 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        if (err != Z_OK && err != Z_BUF_ERROR)
          throw FormatError(where_, std::string("corrupt gzip data: ") + (msg ? msg : "unknown error"));
        if (err == Z_BUF_ERROR) throw FormatError(where_, "truncated gzip data");
        break;
      }
      got += static_cast<std::size_t>(r);
    }
    return got;
  }

 private:
  gzFile f_ = nullptr;
  const std::string& where_;
};

}  // namespace

Tensor load_idx(const std::filesystem::path& path, std::int64_t limit) {
  const std::string where = path.string();
  if (limit < 0) throw ArgumentError("load_idx", "limit must be >= 0, got " + std::to_string(limit));
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw IoError(where, "no such file");
  const std::uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) throw IoError(where, "cannot read its size: " + ec.message());
  bool gz = false;
  {
    std::ifstream in(path, std::ios::binary);
    unsigned char m[2] = {0, 0};
    in.read(reinterpret_cast<char*>(m), 2);
    gz = in.gcount() == 2 && m[0] == 0x1f && m[1] == 0x8b;
  }
  GzFile f(path, where);
  std::uint8_t magic[4];
  if (f.read(magic, 4) != 4) throw FormatError(where, "IDX file too short for its magic number");
  if (magic[0] != 0 || magic[1] != 0) throw FormatError(where, "not an IDX file (bad magic number)");
  detail::SrcType type;
  switch (magic[2]) {
    case 0x08: type = detail::SrcType::U8; break;
    case 0x09: type = detail::SrcType::I8; break;
    case 0x0B: type = detail::SrcType::I16; break;
    case 0x0C: type = detail::SrcType::I32; break;
    case 0x0D: type = detail::SrcType::F32; break;
    case 0x0E: type = detail::SrcType::F64; break;
    default: throw FormatError(where, "unknown IDX data type code " + std::to_string(magic[2]));
  }
  const int rank = magic[3];
  if (rank < 1 || rank > Shape::kMaxRank)
    throw FormatError(where, "IDX rank " + std::to_string(rank) + " outside [1, 8]");
  std::vector<std::uint8_t> dims_be(static_cast<std::size_t>(rank) * 4);
  if (f.read(dims_be.data(), dims_be.size()) != dims_be.size())
    throw FormatError(where, "IDX header truncated");
  std::vector<std::int64_t> dims(static_cast<std::size_t>(rank));
  for (std::size_t i = 0; i < dims.size(); ++i) dims[i] = detail::load_be<std::uint32_t>(&dims_be[i * 4]);
  const std::int64_t items = limit > 0 ? std::min(limit, dims[0]) : dims[0];
  dims[0] = items;

  const std::size_t es = detail::src_type_size(type);
  std::int64_t numel = 1, bytes = 0;
  for (const std::int64_t d : dims)
    if (!detail::checked_mul(numel, d, numel)) throw FormatError(where, "IDX dimensions are absurdly large");
  if (!detail::checked_mul(numel, static_cast<std::int64_t>(es), bytes))
    throw FormatError(where, "IDX dimensions are absurdly large");
  // Bound the claim by what the file can hold (deflate expands at most ~1032:1) before allocating.
  const std::uint64_t header = 4 + dims_be.size();
  const std::uint64_t can_hold = gz ? file_size * 1032 + 4096 : file_size - header;
  if (static_cast<std::uint64_t>(bytes) > can_hold)
    throw FormatError(
        where, "IDX header claims " + std::to_string(bytes) + " bytes of data; the file cannot hold them");

  Tensor t = Tensor::empty(Shape(dims), detail::loaded_dtype(type));
  auto* out = static_cast<std::uint8_t*>(t.raw());
  const std::size_t os = dtype_size(t.dtype());
  std::vector<std::uint8_t> buf(std::min<std::size_t>(static_cast<std::size_t>(bytes), 1u << 20));
  for (std::int64_t done = 0; done < numel;) {
    const std::size_t n = std::min<std::size_t>(buf.size() / es, static_cast<std::size_t>(numel - done));
    if (f.read(buf.data(), n * es) != n * es)
      throw FormatError(where, "IDX data truncated after " + std::to_string(done) + " of " +
                                   std::to_string(numel) + " values");
    for (std::size_t i = 0; i < n; ++i, out += os) {
      const std::uint8_t* p = &buf[i * es];
      switch (type) {
        case detail::SrcType::U8: detail::store_le<std::int32_t>(out, *p); break;
        case detail::SrcType::I8: detail::store_le<std::int32_t>(out, static_cast<std::int8_t>(*p)); break;
        case detail::SrcType::I16:
          detail::store_le<std::int32_t>(out, detail::load_be<std::int16_t>(p));
          break;
        case detail::SrcType::I32:
          detail::store_le<std::int32_t>(out, detail::load_be<std::int32_t>(p));
          break;
        case detail::SrcType::F32:
          detail::store_le<std::uint32_t>(out, detail::load_be<std::uint32_t>(p));
          break;
        default: {  // F64
          const std::uint64_t u = detail::load_be<std::uint64_t>(p);
          double v;
          std::memcpy(&v, &u, 8);
          detail::store_le<float>(out, static_cast<float>(v));
        }
      }
    }
    done += static_cast<std::int64_t>(n);
  }
  std::uint8_t extra;
  if (limit == 0 && f.read(&extra, 1) != 0)
    throw FormatError(where, "IDX file has data past what its header describes");
  return t;
}

}  // namespace diffprobe::io
