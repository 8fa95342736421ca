#pragma once
// "Which block, which t, which pooling?" in one call: for every (t, block, pool) cell of a grid,
// a linear probe trained on one data set's features and scored on another's.
//
// Cost: per pooling and split, one U-Net forward per (t, batch) to the deepest requested block
// (every block's features come from that pass; never one forward per block), then one probe per
// cell. Everything is cached under the output folder and a rerun computes only what is missing:
//   DIR/features/{train,test}_t{T}_{pool}.safetensors   the cell features (resumable feature files)
//   DIR/cells/t{T}_b{B}_{pool}.json                     one cell's scores, written when it is done
//   DIR/sweep.csv, DIR/sweep.json                        the table and the best cell
//   DIR/heatmap_{pool}.png                               top-1 per (block, t), the best cell framed
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "diffprobe/data/dataset.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/heads/ridge_probe.hpp"
#include "diffprobe/heads/train_config.hpp"

namespace diffprobe {

/// How each cell is scored. Ridge: the closed-form fast path (ridge_probe.hpp); Trained: the
/// linear head trained by SGD/AdamW with `SweepOptions::trained` (what `diffprobe probe` does).
enum class SweepProbe { Ridge, Trained };
const char* sweep_probe_name(SweepProbe p) noexcept;    // "ridge", "trained"
SweepProbe parse_sweep_probe(const std::string& name);  // ArgumentError when unknown

/// Where a sweep stands: two phases, each with its own count (images through the forward pass,
/// then cells probed), so a progress bar can show each phase's remaining time.
struct SweepProgress {
  std::string phase;         // "extract", "probe", then "refine" when refining
  std::string what;          // "train t=10 avg:2", "t10.b9 avg:2", ...
  std::int64_t done = 0;     // images (extract) or cells (probe) done, resumed ones included
  std::int64_t total = 0;    // of the phase
  std::int64_t resumed = 0;  // found done by an earlier run
  double seconds = 0;        // since the call started
};

struct SweepOptions {
  std::vector<int> timesteps = {10, 50, 100, 200};
  std::vector<int> blocks;                       // empty: every block of the model
  std::vector<PoolSpec> pools = {PoolSpec{}};    // avg:2
  std::int64_t limit_train = 0, limit_test = 0;  // > 0: only the first samples
  std::uint64_t noise_seed = 0;                  // of the training split's noise
  std::optional<std::uint64_t> test_noise_seed;  // default noise_seed + 1 (other noise than training)
  int batch_size = 64;                           // images per U-Net pass (times the number of t)
  Device device = Device::cpu();
  Precision precision = Precision::FP32;
  int threads = 0;  // <= 0: default_threads()
  SweepProbe probe = SweepProbe::Ridge;
  RidgeOptions ridge;
  /// The trained probe (SweepProbe::Trained, and refinement): AdamW lr 1e-3, cosine, 30 epochs,
  /// standardised features, seed 0 (the recipe of docs/results.md's study).
  TrainConfig trained = default_trained();
  /// > 0: the best `refine` cells by the probe are scored again with the trained probe, and the
  /// best cell is chosen by those scores (the ridge probe ranks; the trained probe decides). The
  /// ridge probe ranks the grid like the trained one (Spearman 0.98 on the bundled model) but
  /// its top cells lie within noise of each other; 5 refined cells cost ~3 % of the probes there.
  int refine = 5;
  std::filesystem::path weights;  // hashed into the feature files' metadata when given
  std::function<void(const SweepProgress&)> on_progress;
  const std::atomic<bool>* cancel = nullptr;  // true: stop after the current batch or cell (CancelledError)

  static TrainConfig default_trained();
};

struct SweepCell {
  int t = 0;
  int block = 0;
  std::string pool;           // PoolSpec::str()
  std::int64_t features = 0;  // per sample
  double top1 = 0, top5 = 0;  // on the test split, by SweepOptions::probe
  double alpha = 0;           // ridge: the chosen strength (NaN for the trained probe)
  double probe_seconds = 0;
  std::optional<double> refined_top1, refined_top5;  // the trained probe, when refined
  bool resumed = false;                              // read from DIR/cells, not computed now
};

struct SweepResult {
  std::vector<SweepCell> cells;  // pool-major, then t, then block, in the options' order
  SweepCell best;                // by refined top-1 when refining, else by top-1 (ties: first)
  std::int64_t train_samples = 0, test_samples = 0;
  int num_classes = 0;
  double seconds = 0;          // wall time of the call
  double extract_seconds = 0;  // of which extracting features (U-Net forwards and decoding)
  double probe_seconds = 0;    // of which probing cells (refinement included)
  std::filesystem::path csv, json;
  std::vector<std::filesystem::path> heatmaps;  // one per pooling
};

/// Runs (or resumes) the sweep into `dir`. `train` and `test` must have labels. ConfigError when
/// `dir` holds features made with other settings (saying what differs); CancelledError when
/// `cancel` was set (everything finished so far is kept).
SweepResult run_sweep(const UNet& model, data::Dataset& train, data::Dataset& test,
                      const std::filesystem::path& dir, const SweepOptions& options);

/// Spearman's rank correlation of two equally long score lists (ties get their mean rank).
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace diffprobe
