#pragma once
// Writing a file so that readers see either the old content or the complete new one: the bytes
// go to a temporary file next to the target, which is renamed over it only once fully written.
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <memory>
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
  /// From now on, every write also feeds a SHA-256 (of the bytes written after this call).
  void start_hash();
  /// That SHA-256 in lowercase hex (once).
  std::string hash_hex();
  /// Replaces bytes already written at `offset` (not hashed: for values that describe the data).
  void overwrite_at(std::size_t offset, const void* data, std::size_t bytes);
  /// Flushes, closes and renames over the target. IoError on any failure.
  void commit();

 private:
  std::filesystem::path target_, temp_;
  std::FILE* f_ = nullptr;
  bool done_ = false;
  std::shared_ptr<void> hash_;  // detail::Sha256 while hashing
};

/// Whether `target` could be written now: creates (and removes) a temporary file beside it.
/// IoError naming the target and the reason (read-only file system, missing folder, ...): the
/// commands call it before hours of work that would end in writing the target.
void check_writable(const std::filesystem::path& target);

}  // namespace diffprobe::io::detail
