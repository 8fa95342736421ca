#pragma once
// safetensors: 8-byte little-endian header length, a JSON header, then the raw data.
// Loading memory-maps the file: tensors are views of the mapping (no copy) and keep it alive
// (or, with FileAccess::Read, of a copy read at load).
#include <filesystem>

#include "diffprobe/io/file_access.hpp"
#include "diffprobe/io/named_tensors.hpp"

namespace diffprobe::io {

/// Reads a safetensors file. Validates the header strictly (sizes, offsets that tile the data,
/// dtypes, shapes) and throws FormatError / IoError with the file name on any inconsistency.
NamedTensors load_safetensors(const std::filesystem::path& path, FileAccess access = FileAccess::Map);

/// Writes `tensors` (CPU; any layout is written in logical NCHW order) with their metadata.
/// `store` converts floating tensors to f32, f16 or bf16 on the way (integers are kept).
/// Writes to a temporary file and renames it, so a reader never sees a half-written file.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      DType store_float_as = DType::F32);

}  // namespace diffprobe::io
