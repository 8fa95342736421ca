#pragma once
// Writing a file so that readers see either the old content or the complete new one: the bytes
// go to a temporary file next to the target, which is renamed over it only once fully written.
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <string>

namespace diffprobe::io::detail {

class AtomicFile {
 public:
  /// Creates the temporary file; IoError when the directory is not writable.
  explicit AtomicFile(const std::filesystem::path& target);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t bytes);
  /// Flushes, closes and renames over the target. IoError on any failure.
  void commit();

 private:
  std::filesystem::path target_, temp_;
  std::FILE* f_ = nullptr;
  bool done_ = false;
};

}  // namespace diffprobe::io::detail
