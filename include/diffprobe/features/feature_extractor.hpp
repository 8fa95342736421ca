#pragma once
// The paper's feature extraction: noise an image to step t, run the U-Net up to block b, keep
// that block's output (optionally pooled). One U-Net pass per t serves every requested block,
// and the passes for several t run as one batch.
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/planned_allocator.hpp"
#include "diffprobe/diffusion/noise_schedule.hpp"
#include "diffprobe/features/pooler.hpp"
#include "diffprobe/model/unet.hpp"

namespace diffprobe {

enum class NoiseMode {
  Seeded,  // counter-based noise keyed by (seed, sample index, t, draw): reproducible anywhere
  None,    // the input already is x_t: fed to the U-Net unchanged, with t as the timestep
  Given,   // the caller passes eps to extract()
};

struct ExtractOptions {
  std::vector<int> timesteps = {90};
  std::vector<int> blocks = {24};
  NoiseMode noise = NoiseMode::Seeded;
  std::uint64_t noise_seed = 0;
  int noise_draws = 1;           // features averaged over this many noise draws
  std::optional<int> label;      // class label for class-conditional models
  std::optional<PoolSpec> pool;  // pool inside the extractor (saves memory on big datasets)
  int batch_size = 16;           // images per U-Net pass (times the number of timesteps)
  /// Where and how the U-Net runs: device, threads (<= 0: default_threads()), precision. Its
  /// allocator is best left null: the extractor then serves the activations from its own memory
  /// plan (on the CPU); a given allocator is used instead.
  ExecContext exec;
  /// Check every feature for NaN / infinity after each pass (NumericError naming the sample, t and
  /// block) instead of writing them. Inputs are always checked.
  bool check_finite = false;
};

/// Features keyed by (t, block): each [N, C, H, W] (NCHW order), or pooled as the options say.
class FeatureSet {
 public:
  const Tensor& at(int t, int block) const;
  bool contains(int t, int block) const { return items_.count({t, block}) != 0; }
  void set(int t, int block, Tensor features) { items_[{t, block}] = std::move(features); }
  const std::map<std::pair<int, int>, Tensor>& items() const noexcept { return items_; }

 private:
  std::map<std::pair<int, int>, Tensor> items_;
};

/// Progress of a long extraction: images done so far of the total.
using ProgressFn = std::function<void(std::int64_t done, std::int64_t total)>;

class FeatureExtractor {
 public:
  /// Validates the options against the model (blocks in range, t in [0, T), label vs class_cond,
  /// pooling within the blocks' sizes) and throws the typed error otherwise.
  FeatureExtractor(const UNet& model, ExtractOptions options);
  /// The extractor keeps a reference to the model: a temporary would dangle.
  FeatureExtractor(UNet&& model, ExtractOptions options) = delete;

  /// x0: f32 [N, C, S, S] images in [-1, 1] (or x_t with NoiseMode::None). first_index is the
  /// dataset index of x0[0] (the noise key), so features do not depend on how data is batched.
  /// eps: required exactly with NoiseMode::Given, same shape as x0 (one draw).
  /// Thread-safe: several threads may extract with one extractor (and several extractors may share
  /// one UNet); one call at a time replays the recorded memory plan, concurrent ones allocate from
  /// the default allocator. The features are the same bytes either way.
  FeatureSet extract(const Tensor& x0, std::int64_t first_index = 0, const Tensor& eps = {},
                     const ProgressFn& progress = {}) const;

  /// The shape of one feature tensor for N samples (after pooling, when pooling is set).
  Shape feature_shape(int t, int block, std::int64_t n) const;
  /// [1, in_channels, image_size, image_size]: what extract() takes per image.
  Shape input_spec() const { return model_->input_shape(1); }
  const ExtractOptions& options() const noexcept { return options_; }
  const NoiseSchedule& schedule() const noexcept { return schedule_; }
  const UNet& model() const noexcept { return *model_; }

 private:
  const UNet* model_;
  ExtractOptions options_;
  NoiseSchedule schedule_;
  mutable PlannedAllocator allocator_;  // activations of every pass placed by one memory plan
  mutable std::mutex plan_mu_;          // held by the one call that uses allocator_
};

}  // namespace diffprobe
