#pragma once
// IDX files (MNIST / Fashion-MNIST), plain or gzip-compressed.
#include <filesystem>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::io {

/// Reads an IDX file (".gz" or not, detected by content). unsigned-byte data comes back as an
/// I32 tensor of the file's dimensions (e.g. [N, 28, 28] images or [N] labels); float data as F32.
/// `limit` > 0 reads only the first `limit` items of dimension 0.
Tensor load_idx(const std::filesystem::path& path, std::int64_t limit = 0);

}  // namespace diffprobe::io
