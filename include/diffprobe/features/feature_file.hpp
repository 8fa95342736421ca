#pragma once
// Feature files: extracted features saved as safetensors, so NumPy / PyTorch read them directly.
//   tensors   "t{T}.b{B}"  [N, ...] floating (f32 by default), one per (timestep, block)
//             "labels"     i64 [N] (optional)
//   metadata  (safetensors "__metadata__", all strings)
//             format = "diffprobe.features", format_version = "1", weights_sha256, config (the
//             U-Net config JSON), timesteps ("90,150"), blocks ("19,24"), pooling ("avg:2" or
//             "none"), noise_seed, noise_draws, preprocessing, preprocess ("adm", "torchvision",
//             or "" for arrays given as model inputs), copies (augmented copies per sample, rows
//             copy-major; "1" without augmentation), library ("diffprobe 0.1.0"), plus any
//             extra keys verbatim.
// FeatureWriter produces the same file resumably, chunk by chunk, for long extractions.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/io/named_tensors.hpp"

namespace diffprobe {

namespace data {
class Dataset;
}

/// "t90.b24".
std::string feature_name(int t, int block);
/// "t90.b24" -> {90, 24}; ArgumentError for anything else.
std::pair<int, int> parse_feature_name(const std::string& name);

/// SHA-256 of a file in lowercase hex (the weights fingerprint); IoError when unreadable.
std::string file_sha256(const std::filesystem::path& path);

/// A row whose image could not be read and was skipped (extract --on-bad-image skip).
struct SkippedRow {
  std::int64_t row = 0;  // in the file being written
  std::string error;
  friend bool operator==(const SkippedRow&, const SkippedRow&) = default;
};

struct FeatureMetadata {
  std::string weights_sha256;    // of the weights file
  std::string config_json;       // UNetConfig::to_json()
  std::vector<int> timesteps;    // every t in the file
  std::vector<int> blocks;       // every block in the file
  std::string pooling = "none";  // PoolSpec::str() or "none"
  std::uint64_t noise_seed = 0;
  int noise_draws = 1;
  std::string preprocessing;  // data::Dataset::describe()
  std::string preprocess;     // "adm", "torchvision", or "" (arrays given as inputs)
  int copies = 1;             // augmented copies per sample: N = copies x samples
  std::string library;        // "diffprobe <version>"; filled in on write when empty
  /// Rows whose image could not be read and was skipped, ascending; their features are NaN.
  /// Stored as the JSON object {"rows": [{"error": "...", "row": R}, ...]} under 'skipped_rows'
  /// (not written when empty; from_strings refuses a malformed or unordered list).
  std::vector<SkippedRow> skipped_rows;
  std::map<std::string, std::string> extra;  // anything else (keys must not clash with the above)

  /// What an extraction with `fx` records: config, t and block lists, pooling, noise seed and
  /// draws; the weights' SHA-256 when `weights` is given, the dataset's description and
  /// preprocessing mode when given (copies stay 1: the caller that augments sets them).
  static FeatureMetadata describe(const FeatureExtractor& fx, const std::filesystem::path& weights = {},
                                  const data::Dataset* dataset = nullptr);

  /// The safetensors metadata strings (ArgumentError when an extra key clashes).
  std::map<std::string, std::string> to_strings() const;
  /// Parses and validates them (FormatError naming `where`, e.g. no or another format marker).
  static FeatureMetadata from_strings(const std::map<std::string, std::string>& m, const std::string& where);

  friend bool operator==(const FeatureMetadata&, const FeatureMetadata&) = default;
};

/// Writes a feature file atomically (a temporary file renamed into place). Every entry of
/// `features` becomes "t{T}.b{B}"; features [N, ...] must agree on N, labels are i64 [N].
/// Floating tensors are stored as `store` (f32, f16 or bf16).
void save_features(const std::filesystem::path& path, const FeatureSet& features,
                   const std::optional<Tensor>& labels, const FeatureMetadata& metadata,
                   DType store = DType::F32);
/// The same from named tensors: "t{T}.b{B}" features and an optional "labels".
void save_features(const std::filesystem::path& path, const io::NamedTensors& tensors,
                   const FeatureMetadata& metadata, DType store = DType::F32);

class FeatureFile {
 public:
  /// Opens (memory-maps) and validates: IoError when unreadable, FormatError when it is not a
  /// well-formed feature file (not safetensors, truncated, no format marker, a tensor that is
  /// neither a feature nor the labels, features whose N differ, labels that are not integer [N],
  /// a (t, block) the metadata lists do not name).
  static FeatureFile open(const std::filesystem::path& path);
  /// The finished parts of a sharded extraction (extraction_job.hpp), all of them, in shard
  /// order, read as the file they merge into: features concatenated in memory, metadata without
  /// the part.* keys. FormatError when they are not one complete split of one extraction.
  static FeatureFile open_parts(const std::vector<std::filesystem::path>& parts);

  const std::filesystem::path& path() const noexcept { return path_; }
  /// Number of samples N.
  std::int64_t size() const noexcept { return n_; }
  /// Feature names in file order.
  const std::vector<std::string>& names() const noexcept { return names_; }
  bool contains(const std::string& name) const;
  /// The stored tensor [N, ...] (a view of the mapped file; the stored dtype); ArgumentError
  /// listing the available names when absent.
  const Tensor& feature(const std::string& name) const;
  const Tensor& feature(int t, int block) const { return feature(feature_name(t, block)); }
  /// Every feature as a FeatureSet.
  FeatureSet features() const;
  /// i64 [N], or std::nullopt when the file has no labels.
  std::optional<Tensor> labels() const;
  const FeatureMetadata& metadata() const noexcept { return metadata_; }
  /// Writes one tensor ("t90.b24" or "labels") as .npy (f16 stays f16; bf16 becomes f32).
  void export_npy(const std::string& name, const std::filesystem::path& out) const;

 private:
  std::filesystem::path path_;
  io::NamedTensors tensors_;
  std::vector<std::string> names_;
  std::optional<Tensor> labels_;
  FeatureMetadata metadata_;
  std::int64_t n_ = 0;
};

struct FeatureWriterOptions {
  std::int64_t total = 0;          // N: samples in the finished file
  std::int64_t chunk_size = 1024;  // samples per chunk (the last one may be shorter)
  bool labels = true;              // every chunk carries labels
  DType store = DType::F32;        // floating dtype of the finished file
  std::string checksum_key;        // non-empty: finish() records the data section's SHA-256 under it
};

/// Resumable writing. Finished chunks go to PATH.partial/ (one .npy per tensor and chunk, and
/// progress.json, each replaced atomically, the progress record last), so a run killed at any
/// point loses at most the chunks in flight. Constructing a writer on a path with a partial
/// folder resumes it; finish() assembles PATH (atomically, streaming chunk by chunk) and removes
/// the folder. The finished file is byte-identical to save_features() of the same data.
class FeatureWriter {
 public:
  /// ArgumentError for bad options; ConfigError when a partial folder exists that was started
  /// with other options or metadata (delete it to start over); FormatError when its progress
  /// record is corrupt.
  FeatureWriter(const std::filesystem::path& path, FeatureMetadata metadata, FeatureWriterOptions options);

  std::int64_t num_chunks() const noexcept { return num_chunks_; }
  /// [begin, end) sample range of a chunk (ArgumentError when out of range).
  std::pair<std::int64_t, std::int64_t> chunk_range(std::int64_t chunk) const;
  bool done(std::int64_t chunk) const;
  std::int64_t num_done() const;
  /// Chunks still to write, ascending.
  std::vector<std::int64_t> pending() const;

  /// Records one chunk (any order; rewriting a done chunk replaces it). Features are [rows, ...]
  /// with rows = the chunk's size; every chunk must hold the same names, per-sample shapes and
  /// dtypes as the first (ShapeError / DTypeError / ArgumentError otherwise); labels i64 [rows]
  /// exactly when options.labels.
  /// `skipped`: rows of this chunk whose image could not be read (their features are NaN); the
  /// finished file lists them in its metadata (skipped_rows).
  void write(std::int64_t chunk, const FeatureSet& features, const std::optional<Tensor>& labels = {},
             const std::vector<SkippedRow>& skipped = {});
  /// Assembles the final file and removes the partial folder; ArgumentError naming the missing
  /// chunks when some are not done.
  void finish();

  const std::filesystem::path& path() const noexcept { return path_; }
  const std::filesystem::path& partial_dir() const noexcept { return partial_; }

 private:
  struct TensorInfo {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> sample_shape;  // shape without dim 0
  };
  void save_progress() const;
  std::filesystem::path chunk_file(std::int64_t chunk, const std::string& name) const;

  std::filesystem::path path_, partial_;
  FeatureMetadata metadata_;
  FeatureWriterOptions options_;
  std::int64_t num_chunks_ = 0;
  std::vector<TensorInfo> tensors_;  // fixed by the first chunk written
  std::vector<bool> done_;
  std::vector<SkippedRow> skipped_;  // ascending rows, of the chunks done
};

}  // namespace diffprobe
