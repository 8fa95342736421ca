#pragma once
// A labelled (or unlabelled) set of images, read in batches so that a data set far larger than
// memory streams through feature extraction. Implementations: ImageFolder, IdxDataset,
// NpyDataset.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/data/input_spec.hpp"
#include "diffprobe/data/transform.hpp"

namespace diffprobe::data {

class Dataset {
 public:
  virtual ~Dataset() = default;

  /// Number of samples N.
  virtual std::int64_t size() const = 0;
  /// Channels and side of every image images() returns.
  virtual InputSpec spec() const = 0;
  /// Class ids, i64 [N] in [0, num_classes()); std::nullopt for an unlabelled set.
  virtual std::optional<Tensor> labels() const = 0;
  /// Number of classes (0 when unlabelled).
  virtual int num_classes() const = 0;
  /// One name per class id (empty when unlabelled).
  virtual std::vector<std::string> class_names() const = 0;
  /// How images are turned into model inputs, for feature-file metadata.
  virtual std::string describe() const = 0;
  /// The geometry applied to decoded images; std::nullopt for data stored as model inputs (.npy).
  virtual std::optional<Transform> transform() const { return std::nullopt; }

  /// A sample that could not be read (a corrupt, truncated or empty file), and why.
  struct BadSample {
    std::int64_t position = 0;  // in the batch asked for
    std::int64_t index = 0;     // in the data set
    std::string error;          // the error's message (it names the file)
  };

  /// Samples [begin, end): f32 [end - begin, C, S, S], NCHW contiguous, values in [-1, 1]
  /// (NpyDataset: as stored). ArgumentError when the range is outside [0, N]. A sample that
  /// cannot be read is an error naming it (the first in the batch), unless `bad` is given: its
  /// slot is then zeros and it is listed there (a diffprobe::Error of the decoder only; anything
  /// else, e.g. std::bad_alloc, still propagates).
  Tensor images(std::int64_t begin, std::int64_t end, std::vector<BadSample>* bad = nullptr) const;
  /// The samples at `indices` (any order, repeats allowed), e.g. a shuffled mini-batch.
  Tensor images_at(std::span<const std::int64_t> indices, std::vector<BadSample>* bad = nullptr) const;

  /// The epoch that keys random augmentation (datasets without augmentation ignore it).
  void set_epoch(std::int64_t epoch) noexcept { epoch_ = epoch; }
  std::int64_t epoch() const noexcept { return epoch_; }
  /// Threads used to decode a batch (<= 0: default_threads()).
  void set_threads(int threads) noexcept { threads_ = threads; }

 protected:
  /// Writes sample `index` (already range-checked) as C * S * S floats to `out`. Called from
  /// several threads at once for different samples.
  virtual void load(std::int64_t index, float* out) const = 0;
  /// Whether load() is worth running on several threads (decoding is; copying is not).
  virtual bool parallel_load() const { return true; }

 private:
  std::int64_t epoch_ = 0;
  int threads_ = 0;
};

}  // namespace diffprobe::data
