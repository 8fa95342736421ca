#pragma once
// How a head is trained: optimiser, learning-rate schedule, batching, validation and early
// stopping. The defaults are the paper's released recipe for the linear probe.
#include <cstdint>
#include <functional>
#include <vector>

namespace diffprobe {

enum class OptimizerKind : std::uint8_t { SGD, AdamW };
/// Constant; Step: lr * gamma^(epoch / step_epochs); Cosine: per step from lr down to min_lr.
enum class ScheduleKind : std::uint8_t { Constant, Step, Cosine };

const char* optimizer_name(OptimizerKind k) noexcept;  // "sgd", "adamw"
const char* schedule_name(ScheduleKind k) noexcept;    // "constant", "step", "cosine"
OptimizerKind parse_optimizer(const char* name);       // ConfigError when unknown
ScheduleKind parse_schedule(const char* name);

/// One epoch of training, as fit() reports it.
struct EpochStats {
  int epoch = 0;
  double lr = 0;              // learning rate of the epoch's first step
  double train_loss = 0;      // mean cross-entropy over the epoch's batches (training mode)
  double train_accuracy = 0;  // top-1 on the same batches, as they were seen during the epoch
  double val_loss = 0;        // NaN without a validation split
  double val_accuracy = 0;    // NaN without a validation split
};

struct TrainHistory {
  std::vector<EpochStats> epochs;
  int best_epoch = -1;  // the epoch whose weights the head holds (last one without validation)
  bool stopped_early = false;
  std::int64_t train_samples = 0, val_samples = 0;
};

struct TrainConfig {
  OptimizerKind optimizer = OptimizerKind::SGD;
  double lr = 1e-2;
  double momentum = 0.0;      // SGD (PyTorch semantics: buf = m * buf + g; p -= lr * buf)
  double weight_decay = 0.0;  // SGD: added to the gradient; AdamW: decoupled (p *= 1 - lr * wd)
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;  // AdamW

  int epochs = 28;
  int batch_size = 128;  // the last, smaller batch of an epoch is kept
  ScheduleKind schedule = ScheduleKind::Step;
  int step_epochs = 7;  // Step: multiply by step_gamma every step_epochs epochs
  double step_gamma = 0.1;
  double min_lr = 0.0;    // Cosine: the final learning rate
  int warmup_epochs = 0;  // linear warm-up (per step) over these first epochs, for any schedule

  std::uint64_t seed = 0;     // shuffling and the validation split
  double val_fraction = 0.0;  // held out of training, stratified by class; 0: none
  int patience = 0;           // early stopping on validation accuracy; 0: off (needs val_fraction > 0)
  bool restore_best = true;   // with validation: end with the weights of the best epoch
  bool standardize = false;   // per-feature mean/std fitted on the training split, saved with the head
  /// Augmented copies: the features hold `copies` views of each of N samples, copy-major (rows
  /// [k N, (k + 1) N) are copy k; labels repeat). Epoch e trains on copy e % copies, as the
  /// paper's code trains on fresh augmentations every epoch; the split, shuffling and the
  /// validation rows (copy 0) are over the N samples; standardisation uses every copy.
  int copies = 1;
  int threads = 0;                                  // <= 0: default_threads()
  std::function<void(const EpochStats&)> on_epoch;  // optional progress callback

  /// The released linear-probe recipe: plain SGD, lr 1e-2, 28 epochs, x0.1 every 7, batch 128.
  static TrainConfig paper_linear();
  /// The released attention-head recipe: the same with lr 5e-2.
  static TrainConfig paper_attention();

  /// ConfigError naming the first field out of range.
  void validate() const;
};

/// Learning rate of step `step` (0-based) of epoch `epoch` when an epoch has `steps_per_epoch` steps.
double learning_rate_at(const TrainConfig& config, int epoch, int step, int steps_per_epoch);

}  // namespace diffprobe
