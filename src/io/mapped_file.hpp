#pragma once
// A read-only, memory-mapped view of a whole file. Loaders hand out tensors that point into the
// mapping and hold a shared_ptr to it, so the pages stay mapped while any tensor needs them and
// only the pages a tensor actually touches are read from disk.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "diffprobe/io/file_access.hpp"

namespace diffprobe::io::detail {

/// Whether [p, p + bytes) lies inside a live file mapping made by MappedFile::open (not a heap
/// copy): its pages are clean file pages the kernel can drop and read again.
bool in_file_mapping(const void* p, std::size_t bytes) noexcept;

/// Hands back this process's pages of [p, p + bytes) when that range lies inside a file mapping
/// (in_file_mapping), so that memory that was only read (e.g. checked) is not counted twice
/// once copied elsewhere; they are read again from the file (or the page cache) on the next
/// touch. Does nothing otherwise: anonymous memory is never advised here.
void release_file_pages(const void* p, std::size_t bytes) noexcept;

class MappedFile {
 public:
  /// Maps `path` (or, with FileAccess::Read, reads it into an exact-size heap buffer); IoError
  /// when it cannot be opened, is not a regular file or cannot be mapped or read.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path,
                                          FileAccess access = FileAccess::Map);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// Start of the mapping (nullptr for an empty file). The mapping is private copy-on-write, so
  /// a caller that writes into a tensor viewing it changes neither the file nor other loads.
  std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  const std::string& name() const noexcept { return name_; }

 private:
  MappedFile() = default;
  std::uint8_t* data_ = nullptr;
  bool mapped_ = false;  // munmap, else delete[]
  std::size_t size_ = 0;
  std::string name_;
};

}  // namespace diffprobe::io::detail
