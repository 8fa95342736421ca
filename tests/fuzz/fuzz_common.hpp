// Shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp, run by scripts/fuzz.sh).
//
// A target feeds its input to one parser and catches diffprobe::Error only: any other exception
// escaping, a crash, a sanitizer report, a leak, a timeout or an allocation over -malloc_limit_mb
// is a finding.
//
// Parsers that only take a path read the input from a per-process memfd named by
// /proc/self/fd/N: rewritten in place for every input (ftruncate + pwrite, no disk I/O), at the
// cost of two system calls plus the open/read the parser does itself (about 5-10 us per input,
// small next to the parsers' own cost under ASan). In fuzz builds the library copies files into
// exact-size heap buffers instead of mapping them (src/io/mapped_file.cpp), so reading past the
// end of the input is an ASan report.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "diffprobe/core/error.hpp"
#include "diffprobe/core/tensor.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::fuzz {

/// One thread (the campaigns run one target per core; OpenMP and the library's pool both obey).
inline void single_threaded() {
  ::setenv("OMP_NUM_THREADS", "1", 1);
  diffprobe::set_default_threads(1);
}

/// The input as a file: the same per-process memfd every time, holding exactly these bytes.
inline const std::filesystem::path& input_file(const std::uint8_t* data, std::size_t size) {
  static const int fd = [] {
    const int f = ::memfd_create("diffprobe_fuzz_input", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  static const std::filesystem::path path = "/proc/self/fd/" + std::to_string(fd);
  if (::ftruncate(fd, 0) != 0) std::abort();
  std::size_t done = 0;
  while (done < size) {
    const ssize_t w = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (w <= 0) std::abort();
    done += static_cast<std::size_t>(w);
  }
  return path;
}

/// Runs f; a diffprobe::Error is the expected way to refuse an input, anything else escapes.
template <class F> void expect_only_diffprobe_errors(F&& f) {
  try {
    f();
  } catch (const diffprobe::Error&) {
  }
}

/// Keeps a value computed from the input alive (so the reads that made it are not optimised out).
inline volatile std::uint64_t kept = 0;
inline void keep(std::uint64_t h) { kept = kept + h; }

/// Reads every byte a loaded tensor claims (ASan checks they lie inside the input's copy).
inline std::uint64_t touch(const diffprobe::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0;
  const auto* p = static_cast<const unsigned char*>(t.raw());
  std::uint64_t h = 0;
  for (std::size_t i = 0; i < t.nbytes(); ++i) h = h * 31 + p[i];
  return h;
}

}  // namespace diffprobe::fuzz
