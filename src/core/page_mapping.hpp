// Anonymous page mappings for the library's large, long-lived buffers (the activation arena, big
// packed weights): memory the kernel returns to the system on unmap, whatever malloc's settings,
// and that can be advised for transparent huge pages. Internal; Linux/POSIX only.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <new>

namespace diffprobe::detail {

/// `bytes` of fresh zero pages, readable and writable; std::bad_alloc when the system refuses.
inline void* map_anonymous(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return p;
}

/// Asks for transparent huge pages over [p, p + bytes): a hint, ignored where THP is off. The
/// kernel backs each 2 MiB-aligned stretch inside the range with a huge page.
inline void advise_huge_pages(void* p, std::size_t bytes) noexcept {
#ifdef MADV_HUGEPAGE
  (void)::madvise(p, bytes, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace diffprobe::detail
