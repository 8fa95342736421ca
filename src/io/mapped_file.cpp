#include "io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "diffprobe/core/error.hpp"

namespace diffprobe::io::detail {

namespace {
// The live mappings: [begin, end) byte ranges, few (one per loaded file).
std::mutex g_mappings_mu;
std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& mappings() {
  static std::vector<std::pair<std::uintptr_t, std::uintptr_t>> m;
  return m;
}
}  // namespace

bool in_file_mapping(const void* p, std::size_t bytes) noexcept {
  const auto b = reinterpret_cast<std::uintptr_t>(p), e = b + bytes;
  std::lock_guard lock(g_mappings_mu);
  return std::any_of(mappings().begin(), mappings().end(),
                     [&](const auto& m) { return b >= m.first && e <= m.second; });
}

void release_file_pages(const void* p, std::size_t bytes) noexcept {
  if (!in_file_mapping(p, bytes)) return;
  static const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (b + page - 1) / page * page, last = (b + bytes) / page * page;
  // MADV_PAGEOUT keeps the contents of every page: clean file pages are dropped and read again,
  // pages a caller wrote (copy-on-write, anonymous) stay or go to swap. A hint: errors ignored.
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_PAGEOUT);
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path, FileAccess access) {
  const std::string name = path.string();
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(name, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw IoError(name, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(name, "not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->name_ = name;
  f->size_ = static_cast<std::size_t>(st.st_size);
#ifdef DIFFPROBE_FUZZING
  // Fuzz builds (cmake/diffprobeFuzz.cmake) always read: with an exact-size heap copy, a read past
  // the end is an ASan report, not a read of the last page's zero padding.
  access = FileAccess::Read;
#endif
  if (f->size_ > 0 && access == FileAccess::Read) {
    f->data_ = new std::uint8_t[f->size_];
    std::size_t got = 0;
    while (got < f->size_) {
      const ssize_t r = ::pread(fd, f->data_ + got, f->size_ - got, static_cast<off_t>(got));
      if (r <= 0) {
        const int e = errno;
        ::close(fd);
        throw IoError(name, std::string("cannot read: ") +
                                (r < 0 ? std::strerror(e) : "the file shrank while it was read"));
      }
      got += static_cast<std::size_t>(r);
    }
  } else if (f->size_ > 0) {
    // Writable private pages: copy-on-write, so in-place edits of a loaded tensor are harmless.
    void* p = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);  // strict overcommit
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw IoError(name, std::string("cannot map: ") + std::strerror(e));
    }
    f->data_ = static_cast<std::uint8_t*>(p);
    f->mapped_ = true;
    const auto b = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard lock(g_mappings_mu);
    mappings().emplace_back(b, b + f->size_);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  return f;
}

MappedFile::~MappedFile() {
  if (mapped_) {
    {
      const auto b = reinterpret_cast<std::uintptr_t>(data_);
      std::lock_guard lock(g_mappings_mu);
      std::erase(mappings(), std::make_pair(b, b + size_));
    }
    ::munmap(data_, size_);
  } else
    delete[] data_;
}

}  // namespace diffprobe::io::detail
