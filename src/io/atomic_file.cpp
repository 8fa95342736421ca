#include "io/atomic_file.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "diffprobe/core/error.hpp"

namespace diffprobe::io::detail {

AtomicFile::AtomicFile(const std::filesystem::path& target) : target_(target) {
  static std::atomic<unsigned> counter{0};
  // Unique per process and call, so concurrent writers of the same target do not collide.
  temp_ = target;
  temp_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  f_ = std::fopen(temp_.c_str(), "wb");
  if (!f_) throw IoError(target_.string(), "cannot create " + temp_.string() + ": " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!done_) {
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
}

void AtomicFile::write(const void* data, std::size_t bytes) {
  if (bytes == 0) return;
  if (std::fwrite(data, 1, bytes, f_) != bytes)
    throw IoError(target_.string(), std::string("write failed: ") + std::strerror(errno));
}

void AtomicFile::commit() {
  const bool flushed = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  const int e = errno;
  const bool closed = std::fclose(f_) == 0;
  f_ = nullptr;
  if (!flushed || !closed) throw IoError(target_.string(), std::string("write failed: ") + std::strerror(e));
  std::error_code ec;
  std::filesystem::rename(temp_, target_, ec);
  if (ec) throw IoError(target_.string(), "cannot rename " + temp_.string() + " into place: " + ec.message());
  done_ = true;
}

}  // namespace diffprobe::io::detail
