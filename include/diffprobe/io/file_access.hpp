#pragma once
// How the loaders get at a file's bytes.
#include <cstdint>

namespace diffprobe::io {

enum class FileAccess : std::uint8_t {
  /// Memory-mapped (the default): loading is instant and only the pages a tensor touches are
  /// read, and tensors view the file's pages. The file must not shrink while they are in use:
  /// a page past a truncated file's new end cannot be read, and the kernel stops the process
  /// with SIGBUS (no library can turn that into an error). Replacing the file by a rename is safe.
  Map,
  /// The whole file read into memory at load: costs its size in RAM and the read up front, but a
  /// later change of the file cannot affect what was loaded (the CLI's --no-mmap).
  Read,
};

}  // namespace diffprobe::io
