#pragma once
// The writing half of the safetensors format, shared by save_safetensors and the feature-file
// writer (which streams data larger than memory): the length prefix and the JSON header, then
// each tensor's bytes in order, to a temporary file renamed over the target when complete.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "diffprobe/core/dtype.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/core/tensor.hpp"
#include "io/atomic_file.hpp"

namespace diffprobe::io::detail {

/// One tensor as the header describes it; its data follows in the order of the entries.
struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
};

/// The format's name of `t` ("F32", "BF16", ...).
const char* safetensors_dtype_name(DType t);

/// Writes the 8-byte little-endian header length and the JSON header: "__metadata__" first
/// (when `metadata` is not empty), then the entries in their order, with data offsets that tile
/// the data in that order; padded with spaces so that the data starts 8-byte aligned. The
/// caller then writes each entry's bytes in order. Returns the JSON text written (the data
/// starts at 8 + its size). ArgumentError for a tensor named "__metadata__".
std::string write_safetensors_header(AtomicFile& f, const std::map<std::string, std::string>& metadata,
                                     const std::vector<SafetensorsEntry>& entries);

/// `t` as stored: on the CPU, contiguous (logical NCHW order) and in `dtype`; a view when it is
/// all three already.
Tensor stored_copy(const Tensor& t, DType dtype);

/// Writes a whole safetensors file: the header, then `write_data(i, file)` for each entry i in
/// order (which must write exactly that entry's bytes), then renames it over `path`.
template <class WriteData>
void write_safetensors(const std::filesystem::path& path, const std::map<std::string, std::string>& metadata,
                       const std::vector<SafetensorsEntry>& entries, WriteData write_data) {
  AtomicFile f(path);
  write_safetensors_header(f, metadata, entries);
  for (std::size_t i = 0; i < entries.size(); ++i) write_data(i, f);
  f.commit();
}

/// The same, recording the SHA-256 of the data section (every byte after the header) as the
/// metadata value of `checksum_key`: written as a placeholder, hashed on the way, patched in
/// before the file is renamed into place.
template <class WriteData> void write_safetensors_with_checksum(const std::filesystem::path& path,
                                                                std::map<std::string, std::string> metadata,
                                                                const std::string& checksum_key,
                                                                const std::vector<SafetensorsEntry>& entries,
                                                                WriteData write_data) {
  const std::string placeholder(64, '0');
  metadata[checksum_key] = placeholder;
  AtomicFile f(path);
  const std::string header = write_safetensors_header(f, metadata, entries);
  const std::string needle = "\"" + checksum_key + "\":\"" + placeholder + "\"";
  const std::size_t at = header.find(needle);
  if (at == std::string::npos)
    throw ArgumentError("write_safetensors", "checksum key '" + checksum_key + "' must be plain");
  f.start_hash();
  for (std::size_t i = 0; i < entries.size(); ++i) write_data(i, f);
  const std::string digest = f.hash_hex();
  f.overwrite_at(8 + at + needle.size() - 1 - placeholder.size(), digest.data(), digest.size());
  f.commit();
}

}  // namespace diffprobe::io::detail
