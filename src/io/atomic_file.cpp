#include "io/atomic_file.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "diffprobe/core/error.hpp"
#include "features/sha256.hpp"

namespace diffprobe::io::detail {

AtomicFile::AtomicFile(const std::filesystem::path& target) : target_(target) {
  static std::atomic<unsigned> counter{0};
  // Unique per process and call, so concurrent writers of the same target do not collide.
  temp_ = target;
  temp_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  f_ = std::fopen(temp_.c_str(), "wb");
  if (!f_) throw IoError(target_.string(), "cannot create " + temp_.string() + ": " + std::strerror(errno));
}

void check_writable(const std::filesystem::path& target) { AtomicFile probe(target); }

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
  if (hash_) static_cast<diffprobe::detail::Sha256*>(hash_.get())->update(data, bytes);
}

void AtomicFile::start_hash() {
  hash_ = std::shared_ptr<void>(new diffprobe::detail::Sha256(),
                                [](void* p) { delete static_cast<diffprobe::detail::Sha256*>(p); });
}

std::string AtomicFile::hash_hex() {
  if (!hash_) throw ArgumentError("AtomicFile::hash_hex", "start_hash() was not called");
  const std::string h = static_cast<diffprobe::detail::Sha256*>(hash_.get())->hex();
  hash_.reset();
  return h;
}

void AtomicFile::overwrite_at(std::size_t offset, const void* data, std::size_t bytes) {
  if (::fseeko(f_, static_cast<off_t>(offset), SEEK_SET) != 0 || std::fwrite(data, 1, bytes, f_) != bytes ||
      ::fseeko(f_, 0, SEEK_END) != 0)
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
