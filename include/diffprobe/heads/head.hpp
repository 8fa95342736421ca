#pragma once
// Classifier heads trained on frozen diffusion features, on the CPU: linear, MLP, a small CNN,
// the paper's attention head and the DifFormer fusion head. A head is built from a HeadSpec,
// trained with fit(), used with logits()/predict()/evaluate(), and saved with its spec
// (and feature standardisation, if any) to one safetensors file.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/heads/head_spec.hpp"
#include "diffprobe/heads/metrics.hpp"
#include "diffprobe/heads/train_config.hpp"
#include "diffprobe/io/named_tensors.hpp"

namespace diffprobe {

class FeatureRows;
namespace detail {
struct HeadAccess;
}

/// Class labels: a rank-1 I64 or I32 tensor, or a vector of ints. Converts implicitly so that
/// every entry point takes either.
class Labels {
 public:
  Labels(const Tensor& labels);                                    // NOLINT(google-explicit-constructor)
  Labels(std::vector<int> labels) : values_(std::move(labels)) {}  // NOLINT
  const std::vector<int>& values() const noexcept { return values_; }
  std::size_t size() const noexcept { return values_.size(); }

 private:
  std::vector<int> values_;
};

class Head {
 public:
  // Shapes given to the factories are the feature tensor's shape with its batch dimension
  // ([N, F], [N, C, H, W]; N is ignored) or a single sample's shape ([F], [C, H, W]).
  static Head linear(const Shape& feature_shape, int num_classes);
  static Head linear(std::int64_t in_features, int num_classes);
  /// Hidden sizes as in the released scripts, e.g. "2048_1024".
  static Head mlp(const Shape& feature_shape, std::string_view hidden, int num_classes);
  static Head mlp(const Shape& feature_shape, std::vector<int> hidden, int num_classes);
  static Head cnn(const Shape& feature_shape, int num_classes, const CnnHeadConfig& config = {});
  static Head attention(const Shape& feature_shape, int num_classes, const AttentionHeadConfig& config = {});
  /// DifFormer: shapes[t][b] is the feature map of block b at timestep t (the same for every t).
  static Head fusion(const std::vector<std::vector<Shape>>& shapes, int num_classes,
                     const AttentionHeadConfig& config = {});
  /// Any valid spec; parameters initialised with `init_seed`.
  static Head from_spec(const HeadSpec& spec, std::uint64_t init_seed = 0);
  /// Reads a head written by save(): spec, weights, standardisation, metadata.
  static Head load(const std::filesystem::path& path);

  Head(Head&&) noexcept;
  Head& operator=(Head&&) noexcept;
  ~Head();

  const HeadSpec& spec() const noexcept;
  int num_classes() const noexcept;
  std::int64_t num_parameters() const noexcept;
  /// Draws fresh parameters (PyTorch's default initialisation; CLS token zero) from `seed`.
  void reset_parameters(std::uint64_t seed);

  /// Trains from the current parameters. `features` holds one tensor per spec input (fusion:
  /// t-major); each is f32/f16/bf16, NCHW or NHWC, [N, ...per-sample shape].
  TrainHistory fit(const Tensor& features, const Labels& labels, const TrainConfig& config = {});
  TrainHistory fit(const std::vector<Tensor>& features, const Labels& labels, const TrainConfig& config = {});
  /// The same from features read from disk batch by batch (feature files larger than memory):
  /// memory is the batch's, and the results equal fit() on the same values in memory.
  TrainHistory fit(const FeatureRows& features, const Labels& labels, const TrainConfig& config = {});
  TrainHistory fit(const std::vector<const FeatureRows*>& features, const Labels& labels,
                   const TrainConfig& config = {});

  /// f32 [N, classes].
  Tensor logits(const Tensor& features) const;
  Tensor logits(const std::vector<Tensor>& features) const;
  std::vector<int> predict(const Tensor& features) const;
  std::vector<int> predict(const std::vector<Tensor>& features) const;
  Report evaluate(const Tensor& features, const Labels& labels) const;
  Report evaluate(const std::vector<Tensor>& features, const Labels& labels) const;
  Tensor logits(const FeatureRows& features) const;
  Tensor logits(const std::vector<const FeatureRows*>& features) const;
  Report evaluate(const FeatureRows& features, const Labels& labels) const;
  Report evaluate(const std::vector<const FeatureRows*>& features, const Labels& labels) const;

  /// Parameters by their PyTorch-style names (f32 copies), plus "standardize.<i>.mean|std".
  io::NamedTensors state_dict() const;
  /// Replaces parameters (and standardisation) from `tensors`; FormatError on a missing,
  /// unexpected or mis-shaped entry.
  void load_state_dict(const io::NamedTensors& tensors);
  /// Writes spec, weights and metadata; weights stored as `store` (F32, F16 or BF16).
  void save(const std::filesystem::path& path, DType store = DType::F32) const;

  /// Threads for logits/predict/evaluate (fit uses TrainConfig::threads); <= 0: default_threads().
  void set_threads(int threads) noexcept;
  int threads() const noexcept;

  /// Free-form strings saved with the head (e.g. the timestep, block and pooling of its
  /// features). Keys starting with "diffprobe." are reserved.
  std::map<std::string, std::string>& metadata() noexcept;
  const std::map<std::string, std::string>& metadata() const noexcept;

 private:
  friend struct detail::HeadAccess;  // head.cpp: one training / inference loop for both kinds of input
  struct Impl;
  explicit Head(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffprobe
