#pragma once
// A reader for the uncompressed ("stored") zip archives torch.save writes. Sizes and offsets come
// from the central directory (local headers may carry zeros and a data descriptor), zip64 records
// are honoured, and every number is checked against the file size before it is used.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/mapped_file.hpp"

namespace diffprobe::io::detail {

struct ZipEntry {
  std::string name;
  std::uint64_t data_offset = 0;  // absolute file offset of the entry's bytes
  std::uint64_t size = 0;
};

class ZipReader {
 public:
  /// Parses the archive's directory. FormatError (naming the file) on any inconsistency,
  /// UnsupportedError for compressed or encrypted entries.
  explicit ZipReader(std::shared_ptr<MappedFile> file);

  const std::vector<ZipEntry>& entries() const noexcept { return entries_; }
  /// The entry called `name`, or nullptr.
  const ZipEntry* find(const std::string& name) const;
  /// The bytes of `e` inside the mapping.
  std::span<const std::uint8_t> bytes(const ZipEntry& e) const {
    return {file_->data() + e.data_offset, static_cast<std::size_t>(e.size)};
  }
  const std::shared_ptr<MappedFile>& file() const noexcept { return file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
};

}  // namespace diffprobe::io::detail
