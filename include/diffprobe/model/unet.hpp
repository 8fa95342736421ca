#pragma once
// The ADM U-Net (guided-diffusion / improved-diffusion), run forward only as far as the
// requested blocks need. Weight names are the PyTorch state-dict names.
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"
#include "diffprobe/io/file_access.hpp"
#include "diffprobe/io/named_tensors.hpp"
#include "diffprobe/model/int8_calibration.hpp"
#include "diffprobe/model/unet_config.hpp"
#include "diffprobe/ops/conv2d.hpp"

namespace diffprobe {

/// One state-dict entry the architecture needs, in the order the official code registers them.
struct WeightSpec {
  std::string name;
  Shape shape;
};

/// The state dict a configuration needs (names and shapes), in registration order.
std::vector<WeightSpec> unet_weight_specs(const UNetConfig& config);

/// What one paper-numbered block is: its state-dict prefix, output shape and cost.
struct BlockInfo {
  int block = 0;            // 1-based paper number; 0 = final output
  std::string name;         // "input_blocks.4", "middle_block", "output_blocks.4", "out"
  std::string description;  // "ResBlock(512->512) + Attention(8 heads)"
  Shape output_shape;       // for batch 1
  std::int64_t parameters = 0;
  double gflop = 0;  // 2*MAC for batch 1, this block alone
};

/// Per-block information for a configuration (no weights needed): blocks 1..2I+1, then 0 (out).
std::vector<BlockInfo> unet_block_infos(const UNetConfig& config);

/// Total parameter count of a configuration.
std::int64_t unet_num_parameters(const UNetConfig& config);

struct LoadOptions {
  std::optional<std::string> preset;  // a preset name (UNetConfig::preset_names())
  std::optional<UNetConfig> config;   // an explicit configuration (wins over preset)
  std::optional<int> image_size;      // when neither is given: the size for shape inference
  /// Map the weights file (the default; it must then not be truncated while the model lives) or
  /// read it whole at load (io/file_access.hpp).
  io::FileAccess file_access = io::FileAccess::Map;
};

class UNet {
 public:
  /// Loads weights (safetensors, torch zip or legacy) and builds the model. The config comes
  /// from options.config, else options.preset, else a preset matching the file name, else the
  /// safetensors metadata "config", else it is inferred from the weights' shapes (see
  /// inference_notes()). Weights are validated strictly (ConfigError listing missing,
  /// unexpected and mis-shaped keys).
  static UNet load(const std::filesystem::path& weights, const LoadOptions& options = {});
  /// Builds from a state dict already in memory (f16/bf16 weights are converted to f32).
  static UNet from_weights(const UNetConfig& config, const io::NamedTensors& weights);
  /// Every weight random (deterministic in `seed`), scaled to keep activations O(1):
  /// for benchmarks and tests, no file needed.
  static UNet random(const UNetConfig& config, std::uint64_t seed = 0);

  UNet(UNet&&) noexcept;
  UNet& operator=(UNet&&) noexcept;
  ~UNet();

  const UNetConfig& config() const noexcept;
  /// How the config was obtained (preset name, inferred flags, assumptions).
  const std::vector<std::string>& inference_notes() const noexcept;
  int num_blocks() const noexcept;        // 2I+1 (paper's blocks are 1..num_blocks())
  int num_input_blocks() const noexcept;  // I
  std::int64_t num_parameters() const noexcept;
  /// Per-block information for blocks 1..num_blocks() then 0 (the output), at batch 1.
  std::vector<BlockInfo> block_infos() const;
  /// Output shape of block b (0 = out) for batch n. ArgumentError when out of range.
  Shape block_output_shape(int block, std::int64_t batch = 1) const;
  /// Input shape for batch n: [n, in_channels, image_size, image_size].
  Shape input_shape(std::int64_t batch = 1) const;

  /// Runs the U-Net on x_t (f32 [N, C, H, W], any layout; H = W = image_size) at timesteps t
  /// (f32 [N], passed to the network as is) with optional class labels (i64 [N]; required
  /// exactly when the model is class-conditional) and returns the outputs of the requested
  /// blocks (1-based paper numbering; 0 = the final output), as NHWC f32 tensors of logical
  /// shape [N, C, H, W] (in the reduced precisions the layers keep bf16 activations inside,
  /// see activation_context; what is returned is widened to f32). Computation stops after the deepest
  /// requested block; skip tensors are released as soon as nothing still to be computed needs them.
  std::map<int, Tensor> forward(const Tensor& x_t, const Tensor& t, const Tensor& labels,
                                std::span<const int> blocks, const ExecContext& ctx = {}) const;
  /// Called right after each block is computed (block number, its output in the activation
  /// dtype, f32 or bf16; 0 = the final output): per-block profiling and tracing without changing
  /// what forward computes.
  using BlockCallback = std::function<void(int block, const Tensor& output)>;
  std::map<int, Tensor> forward(const Tensor& x_t, const Tensor& t, const Tensor& labels,
                                std::span<const int> blocks, const ExecContext& ctx,
                                const BlockCallback& on_block) const;
  /// Convenience: the final output (block 0).
  Tensor forward(const Tensor& x_t, const Tensor& t, const Tensor& labels = {},
                 const ExecContext& ctx = {}) const;

  /// Prepares every op for a device/precision now (weights reordered once) instead of on first use.
  void prepare(const ExecContext& ctx) const;
  /// Prepares only the ops a forward to these blocks runs (0 = the final output = everything).
  void prepare(const ExecContext& ctx, std::span<const int> blocks) const;

  /// The int8 precision (Precision::INT8, CPU): the convolutions that run in int8, by state-dict
  /// prefix: all but the first and the output's, which stay bf16 (3 input channels, the output's
  /// few: a small share of the work, and the two most exposed to rounding).
  std::vector<std::string> int8_convolutions() const;
  /// Quantises each convolution named in the calibration with its calibrated scale; the others
  /// take each image's own scale at run time. ConfigError naming what is wrong when a name is not
  /// one of int8_convolutions() or the calibration's config is another model's. Not while
  /// forwards run.
  void set_int8_calibration(const Int8Calibration& calibration);
  /// Back to per-image scales everywhere.
  void clear_int8_calibration();
  /// The calibration in use, or null.
  const Int8Calibration* int8_calibration() const noexcept;

 private:
  friend class Int8CalibrationRecorder;
  // For the recorder: the int8 convolutions with their names; marks one attached (the previous
  // mark is returned).
  std::vector<std::pair<std::string, ops::Conv2d>> int8_ops() const;
  bool mark_recording(bool on) const;
  struct Impl;  // the configuration, the placed layers and the f32 weights they hold (unet.cpp)
  explicit UNet(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The context UNet::forward runs its layers with: `ctx` with ExecContext::activations chosen by
/// the model (the caller's value is not used): BF16 for the CPU's reduced precisions, F32
/// otherwise (docs/model_numerics.md).
ExecContext activation_context(const ExecContext& ctx);

/// Parses "24", "0", "out" into a block number; ArgumentError otherwise.
int parse_block(const std::string& text);

}  // namespace diffprobe
