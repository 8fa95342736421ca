#pragma once
// One feature's rows read from disk on demand, for training and evaluating heads on feature files
// larger than memory: the file (or the parts of a sharded extraction, in order) is neither loaded
// nor mapped whole; each call reads the rows it is asked for (pread, through the page cache) and
// converts them to f32. Memory use is the caller's batch, whatever the file's size.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "diffprobe/core/dtype.hpp"
#include "diffprobe/core/shape.hpp"

namespace diffprobe {

class FeatureRows {
 public:
  /// `feature` ("t90.b24") of one feature file, or of every part of a sharded extraction in
  /// shard order (features/extraction_job.hpp). IoError / FormatError as FeatureFile::open;
  /// ArgumentError when the feature is missing (listing those there are).
  static FeatureRows open(const std::vector<std::filesystem::path>& files, const std::string& feature);

  FeatureRows(FeatureRows&&) noexcept;
  FeatureRows& operator=(FeatureRows&&) noexcept;
  ~FeatureRows();

  std::int64_t rows() const noexcept;
  /// Rows of the files left out because their image could not be read (their features are NaN;
  /// FeatureMetadata::skipped_rows): rows() and labels() count without them.
  std::int64_t skipped_rows() const noexcept;
  /// Per-row shape ([C, H, W] or [D]).
  const Shape& sample_shape() const noexcept;
  std::int64_t row_size() const noexcept { return sample_shape().numel(); }
  DType stored_dtype() const noexcept;
  /// The labels (i64, all rows; small), std::nullopt when the files have none.
  const std::optional<std::vector<std::int64_t>>& labels() const noexcept;
  /// Augmented copies per sample recorded in the metadata (1 without augmentation).
  int copies() const noexcept;

  /// Rows `idx` (any order, repeats allowed) as f32 into out[idx.size() * row_size()].
  /// Thread-safe. ArgumentError for an index out of range, IoError when a read fails.
  void read(std::span<const std::int64_t> idx, float* out) const;
  /// Rows [begin, end) likewise.
  void read_range(std::int64_t begin, std::int64_t end, float* out) const;

 private:
  struct Impl;
  explicit FeatureRows(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffprobe
