#include "io/zip_reader.hpp"

#include <algorithm>

#include "diffprobe/core/error.hpp"
#include "io/bytes.hpp"

namespace diffprobe::io::detail {
namespace {

constexpr std::uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr std::uint32_t kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;
constexpr std::size_t kEndSize = 22, kZip64LocatorSize = 20, kZip64EndSize = 56;
constexpr std::size_t kCentralSize = 46, kLocalSize = 30;

}  // namespace

ZipReader::ZipReader(std::shared_ptr<MappedFile> file) : file_(std::move(file)) {
  const std::uint8_t* d = file_->data();
  const std::uint64_t n = file_->size();
  auto fail = [&](const std::string& why) -> FormatError {
    return FormatError(file_->name(), "zip archive: " + why);
  };

  // End of central directory: the last record signature within the final 64 KiB + 22 bytes
  // (the comment may be up to 65535 bytes).
  if (n < kEndSize) throw fail("file too short (" + std::to_string(n) + " bytes) for a zip archive");
  std::uint64_t eocd = n;  // not found
  const std::uint64_t lowest = n > kEndSize + 0xffff ? n - kEndSize - 0xffff : 0;
  for (std::uint64_t pos = n - kEndSize + 1; pos-- > lowest;) {
    if (load_le<std::uint32_t>(d + pos) == kEndSig &&
        pos + kEndSize + load_le<std::uint16_t>(d + pos + 20) == n) {
      eocd = pos;
      break;
    }
  }
  if (eocd == n) throw fail("no end-of-central-directory record (truncated or not a zip file)");

  std::uint64_t count = load_le<std::uint16_t>(d + eocd + 10);
  std::uint64_t cd_size = load_le<std::uint32_t>(d + eocd + 12);
  std::uint64_t cd_offset = load_le<std::uint32_t>(d + eocd + 16);
  if (load_le<std::uint16_t>(d + eocd + 4) != 0 || load_le<std::uint16_t>(d + eocd + 6) != 0)
    throw fail("multi-disk archives are not supported");

  // Zip64: a locator just before the end record points at the zip64 end record, whose 64-bit
  // fields replace the saturated 16/32-bit ones.
  if (eocd >= kZip64LocatorSize && load_le<std::uint32_t>(d + eocd - kZip64LocatorSize) == kZip64LocatorSig) {
    const std::uint64_t z64 = load_le<std::uint64_t>(d + eocd - kZip64LocatorSize + 8);
    if (z64 > eocd - kZip64LocatorSize || eocd - kZip64LocatorSize - z64 < kZip64EndSize)
      throw fail("zip64 end record offset " + std::to_string(z64) + " is outside the file");
    if (load_le<std::uint32_t>(d + z64) != kZip64EndSig) throw fail("bad zip64 end record signature");
    count = load_le<std::uint64_t>(d + z64 + 32);
    cd_size = load_le<std::uint64_t>(d + z64 + 40);
    cd_offset = load_le<std::uint64_t>(d + z64 + 48);
  } else if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    throw fail("end record needs zip64 values but there is no zip64 locator");
  }
  if (cd_offset > n || cd_size > n - cd_offset)
    throw fail("central directory [" + std::to_string(cd_offset) + ", +" + std::to_string(cd_size) +
               ") runs past the end of the file (" + std::to_string(n) + " bytes)");
  if (count > cd_size / kCentralSize)
    throw fail(std::to_string(count) + " entries cannot fit in a " + std::to_string(cd_size) +
               "-byte central directory");

  entries_.reserve(static_cast<std::size_t>(count));
  std::uint64_t pos = cd_offset;
  const std::uint64_t cd_end = cd_offset + cd_size;
  for (std::uint64_t i = 0; i < count; ++i) {
    if (cd_end - pos < kCentralSize)
      throw fail("central directory entry " + std::to_string(i) + " is truncated");
    const std::uint8_t* h = d + pos;
    if (load_le<std::uint32_t>(h) != kCentralSig)
      throw fail("bad central directory signature at offset " + std::to_string(pos));
    const std::uint16_t flags = load_le<std::uint16_t>(h + 8);
    const std::uint16_t method = load_le<std::uint16_t>(h + 10);
    std::uint64_t csize = load_le<std::uint32_t>(h + 20);
    std::uint64_t usize = load_le<std::uint32_t>(h + 24);
    const std::uint16_t name_len = load_le<std::uint16_t>(h + 28);
    const std::uint16_t extra_len = load_le<std::uint16_t>(h + 30);
    const std::uint16_t comment_len = load_le<std::uint16_t>(h + 32);
    std::uint64_t local = load_le<std::uint32_t>(h + 42);
    const std::uint64_t var = std::uint64_t{name_len} + extra_len + comment_len;
    if (cd_end - pos - kCentralSize < var)
      throw fail("central directory entry " + std::to_string(i) + " is truncated");
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(h + kCentralSize), name_len);

    // Zip64 extended information: the saturated fields, in this order, each 8 bytes.
    const std::uint8_t* x = h + kCentralSize + name_len;
    for (std::size_t off = 0; off + 4 <= extra_len;) {
      const std::uint16_t id = load_le<std::uint16_t>(x + off);
      const std::uint16_t len = load_le<std::uint16_t>(x + off + 2);
      if (off + 4 + len > extra_len) throw fail("extra field of '" + e.name + "' runs past its entry");
      if (id == 0x0001) {
        const std::uint8_t* f = x + off + 4;
        std::size_t used = 0;
        auto take = [&](std::uint64_t& v) {
          if (v != 0xffffffffu) return;
          if (used + 8 > len) throw fail("zip64 extra field of '" + e.name + "' is too short");
          v = load_le<std::uint64_t>(f + used);
          used += 8;
        };
        take(usize);
        take(csize);
        take(local);
      }
      off += 4u + len;
    }

    if (flags & 0x0001) throw UnsupportedError(file_->name(), "zip entry '" + e.name + "' is encrypted");
    if (method != 0)
      throw UnsupportedError(file_->name(), "zip entry '" + e.name + "' is compressed (method " +
                                                std::to_string(method) +
                                                "); only stored entries are supported");
    if (csize != usize)
      throw fail("stored entry '" + e.name + "' has compressed size " + std::to_string(csize) + " != size " +
                 std::to_string(usize));
    if (local > n || n - local < kLocalSize)
      throw fail("local header of '" + e.name + "' at offset " + std::to_string(local) +
                 " is outside the file");
    const std::uint8_t* lh = d + local;
    if (load_le<std::uint32_t>(lh) != kLocalSig)
      throw fail("bad local header signature for '" + e.name + "' at offset " + std::to_string(local));
    // The local header's own name/extra lengths decide where the data starts.
    const std::uint64_t data =
        local + kLocalSize + load_le<std::uint16_t>(lh + 26) + load_le<std::uint16_t>(lh + 28);
    if (data > n || usize > n - data)
      throw fail("data of '" + e.name + "' [" + std::to_string(data) + ", +" + std::to_string(usize) +
                 ") runs past the end of the file (" + std::to_string(n) + " bytes)");
    e.data_offset = data;
    e.size = usize;
    if (!index_.emplace(e.name, entries_.size()).second) throw fail("duplicate entry '" + e.name + "'");
    entries_.push_back(std::move(e));
    pos += kCentralSize + var;
  }
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

}  // namespace diffprobe::io::detail
