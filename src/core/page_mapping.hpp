// Anonymous page mappings for the library's large, long-lived buffers (the activation arena, big
// packed weights): memory the kernel returns to the system on unmap, whatever malloc's settings,
// and that can be advised for transparent huge pages. Internal; Linux/POSIX only.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
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

/// The transparent huge page size: requests of at least this much get map_anonymous_huge.
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// `bytes` of fresh zero pages starting on a 2 MiB boundary and advised for transparent huge
/// pages, so that every whole 2 MiB stretch is one page fault instead of 512 (on this project's
/// VM a small-page fault costs ~9 us: 64 MiB written for the first time took 150 ms instead of
/// 3.5 ms). The mapping is exactly mapped_length(bytes) long (unmap_anonymous).
inline std::size_t mapped_length(std::size_t bytes) {
  constexpr std::size_t kPage = 4096;
  return (bytes + kPage - 1) / kPage * kPage;
}
inline void* map_anonymous_huge(std::size_t bytes) {
  constexpr std::size_t kHuge = kHugePageBytes;
  bytes = mapped_length(bytes);
  auto* raw = static_cast<char*>(map_anonymous(bytes + kHuge));
  const auto addr = reinterpret_cast<std::uintptr_t>(raw);
  char* p = raw + ((kHuge - addr % kHuge) % kHuge);
  if (p > raw) ::munmap(raw, static_cast<std::size_t>(p - raw));
  const std::size_t tail = static_cast<std::size_t>(raw + bytes + kHuge - (p + bytes));
  if (tail > 0) ::munmap(p + bytes, tail);
  advise_huge_pages(p, bytes);
  return p;
}

/// Unmaps what map_anonymous_huge(bytes) returned.
inline void unmap_anonymous(void* p, std::size_t bytes) noexcept { (void)::munmap(p, mapped_length(bytes)); }

}  // namespace diffprobe::detail
