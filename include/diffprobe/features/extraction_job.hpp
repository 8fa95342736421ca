#pragma once
// The whole extraction as one library call: data set -> FeatureExtractor -> feature file, in
// resumable chunks, with image decoding on its own threads ahead of the forward pass (a bounded
// queue of decoded chunks), a progress callback and cancellation; and the same split over
// processes or machines (`Shard`): each shard writes its own part, and the parts are assembled
// into one file byte-identical to a one-process run (the noise is keyed by the row's index and
// shards start on chunk boundaries, so every batch holds the same rows as in one process).
//
// Files of an output OUT (docs/distributed.md):
//   OUT                        the finished feature file (features/feature_file.hpp)
//   OUT.partial/               a one-process run in progress (FeatureWriter)
//   OUT.parts/part-I-of-N.safetensors            shard I's finished part: rows [b, e) of OUT,
//                                                metadata part.shard, part.rows, part.total_rows,
//                                                part.data_sha256 (of its data section)
//   OUT.parts/part-I-of-N.safetensors.partial/   shard I in progress
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "diffprobe/core/dtype.hpp"
#include "diffprobe/data/dataset.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/features/feature_file.hpp"

namespace diffprobe {

/// Shard `index` of `count`: the share of an output's rows one process computes. Shards own
/// contiguous runs of whole chunks (shard I: chunks [I C / N, (I + 1) C / N) of C).
struct Shard {
  int index = 0;
  int count = 1;
  /// "I/N" with 0 <= I < N; ArgumentError otherwise.
  static Shard parse(const std::string& text);
  std::string str() const;  // "I/N"
  friend bool operator==(const Shard&, const Shard&) = default;
};

/// How this process was started: its rank among the processes of an MPI launcher (mpirun,
/// srun, mpiexec) read from the launcher's environment (Open MPI OMPI_COMM_WORLD_*, PMIx
/// PMIX_RANK, Slurm SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, MPICH PMI_RANK / PMI_SIZE).
struct LaunchInfo {
  Shard shard;           // {rank, size}; {0, 1} when not under a launcher
  int local_rank = 0;    // rank among the processes on this node (GPU choice)
  std::string launcher;  // "open-mpi", "slurm", "pmi", or "" when none
};
LaunchInfo detect_launch();

struct ExtractionProgress {
  std::int64_t rows_done = 0;     // this shard's rows computed, resumed ones included (the latest
                                  // chunk's files are written while the next one is computed)
  std::int64_t rows_total = 0;    // this shard's rows
  std::int64_t rows_resumed = 0;  // found finished from an earlier run
  double seconds = 0;             // since the call started
  double forward_seconds = 0;     // of which the extractor was busy
};

struct ExtractionJobOptions {
  std::int64_t chunk_size = 0;    // rows per resumable chunk; <= 0: 16 batches and >= 128 GFLOP
  int copies = 1;                 // rows per sample (augmented copies, copy-major; needs a random transform)
  std::int64_t limit = 0;         // > 0: only the first `limit` samples
  DType store = DType::F32;       // f32, f16 or bf16
  Shard shard;                    // this process's share of the rows
  int prefetch = 2;               // chunks decoded ahead of the forward pass (>= 1)
  bool merge = true;              // sharded: assemble OUT when this shard finds every part finished
  bool keep_parts = false;        // keep OUT.parts after assembling OUT
  std::filesystem::path weights;  // hashed into the metadata when given
  /// An image that cannot be read (corrupt, truncated, empty file) is skipped instead of stopping
  /// the run: its row stays (row r is still sample r), its features are NaN, and the file lists it
  /// in its metadata (FeatureMetadata::skipped_rows; FeatureRows leaves such rows out). Not with
  /// sharding yet (ArgumentError).
  bool skip_bad_images = false;
  std::map<std::string, std::string> extra_metadata;           // recorded verbatim (not "part.*")
  std::function<void(const ExtractionProgress&)> on_progress;  // after every batch
  const std::atomic<bool>* cancel = nullptr;  // true: stop after the current batch (CancelledError)
};

struct ExtractionResult {
  std::filesystem::path output;     // OUT when it is finished, else this shard's part
  bool complete = false;            // OUT exists
  bool merged = false;              // this call assembled OUT from the parts
  std::int64_t rows_total = 0;      // of OUT
  std::int64_t rows_computed = 0;   // by this call
  std::int64_t rows_resumed = 0;    // finished by an earlier run
  double seconds = 0;               // wall time of the call
  double forward_seconds = 0;       // the extractor busy
  double wait_seconds = 0;          // the extractor waiting for decoded images
  std::vector<SkippedRow> skipped;  // images skipped by this call (skip_bad_images), by output row
};

/// Extracts `dataset` with `extractor` into `out` (a feature file), as this options' shard.
/// Resumes what an earlier run with the same settings left; refuses (ConfigError, saying what
/// differs; nothing is touched) an OUT, a partial run or parts made with other weights, data,
/// flags or another shard count. An OUT that exists with these settings is left as it is
/// (complete = true, nothing computed). Sharded runs write OUT.parts/ and, with `merge`,
/// the shard that finds every part finished assembles OUT (merge_parts). CancelledError when
/// `cancel` was set (finished chunks are kept); IoError (e.g. a full disk) leaves everything
/// resumable.
ExtractionResult run_extraction(const FeatureExtractor& extractor, data::Dataset& dataset,
                                const std::filesystem::path& out, const ExtractionJobOptions& options = {});

/// OUT.parts/part-IIIII-of-NNNNN.safetensors.
std::filesystem::path part_path(const std::filesystem::path& out, const Shard& shard);
/// The parts folder of OUT (OUT.parts).
std::filesystem::path parts_dir(const std::filesystem::path& out);
/// The finished parts of OUT in shard order; ArgumentError naming the missing ones when the
/// split is incomplete, ConfigError when parts of different splits are mixed.
std::vector<std::filesystem::path> complete_parts(const std::filesystem::path& out);

/// Assembles OUT from its finished parts: checks that they are one complete split of the same
/// extraction (metadata equal but for part.*, rows contiguous), verifies every part's
/// checksum (FormatError naming a corrupt part), writes OUT atomically (byte-identical to a
/// one-process run) and removes OUT.parts unless `keep_parts`. Serialised by a lock, so
/// concurrent callers produce OUT once. Returns false when OUT was already there.
bool merge_parts(const std::filesystem::path& out, bool keep_parts = false);

}  // namespace diffprobe
