#pragma once
// What a head is: its kind, the shapes it takes, its sizes. A HeadSpec fully determines a head's
// architecture, is saved (as JSON) with the head's weights, and rebuilds it on load.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "diffprobe/core/shape.hpp"

namespace diffprobe {

enum class HeadKind : std::uint8_t { Linear, MLP, CNN, Attention, Fusion };

/// "linear", "mlp", "cnn", "attention", "fusion".
const char* head_kind_name(HeadKind kind) noexcept;
/// The inverse of head_kind_name; ConfigError for anything else.
HeadKind parse_head_kind(std::string_view name);

/// The paper's attention head (and the DifFormer's shared transformer). Defaults are the paper's.
struct AttentionHeadConfig {
  int dim = 1024;          // token width after the 1x1 conv
  int depth = 2;           // pre-norm transformer blocks
  int heads = 8;           // attention heads (dim % heads == 0)
  int mlp_ratio = 4;       // hidden width of the block MLP = mlp_ratio * dim
  int max_pool = 16;       // feature maps are average-pooled to at most max_pool x max_pool first
  double norm_eps = 1e-5;  // every LayerNorm (PyTorch's default)
};

/// A small convolutional head (the paper describes one but did not release it; see docs/heads.md):
/// pool to <= max_pool, optional LayerNorm over [C, H, W], a 3x3 conv + ReLU per entry of
/// `channels`, global average pooling, Linear.
struct CnnHeadConfig {
  std::vector<int> channels = {256, 256};
  int max_pool = 16;
  bool input_norm = true;
  double norm_eps = 1e-5;
};

struct HeadSpec {
  HeadKind kind = HeadKind::Linear;
  /// Per-sample shape of every input: [F] (or any shape, flattened) for linear/MLP, [C, H, W]
  /// for CNN/attention; for fusion one [C, H, W] per (t, block), t-major: inputs[t * B + b].
  std::vector<Shape> inputs;
  int num_timesteps = 1;  // fusion: how many t the inputs hold (blocks = inputs.size() / num_timesteps)
  int num_classes = 0;
  std::vector<int> hidden;  // MLP hidden sizes
  CnnHeadConfig cnn;
  AttentionHeadConfig attention;  // attention and fusion heads

  /// ConfigError (naming the field) when the spec cannot describe a head.
  void validate() const;
  std::string to_json() const;
  /// FormatError for malformed JSON or missing fields, ConfigError for invalid values.
  static HeadSpec from_json(std::string_view json);
};

/// Parses MLP hidden sizes written as "2048_1024". ConfigError for an empty or malformed list.
std::vector<int> parse_hidden_sizes(std::string_view text);

}  // namespace diffprobe
