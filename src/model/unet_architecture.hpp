#pragma once
// The ADM U-Net's layers in forward order, as the official UNetModel constructor places them
// (guided_diffusion/unet.py), grouped into the paper's numbered blocks. The layer types
// (model/layers/) own their weights, forward, shapes and preparation; this file only places them.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "diffprobe/model/unet_config.hpp"
#include "model/layers/layer.hpp"
#include "model/layers/timestep_embedding.hpp"

namespace diffprobe::detail {

struct PlacedLayer {
  std::string prefix;  // state-dict prefix: "input_blocks.3.0", "out"
  std::unique_ptr<Layer> layer;
};

/// One of the paper's numbered blocks: an input block, the middle block or an output block.
struct UNetBlock {
  std::string name;  // "input_blocks.4", "middle_block", "output_blocks.4"
  std::vector<PlacedLayer> layers;

  Tensor forward(Tensor h, const Tensor& emb, const ExecContext& ctx) const {
    for (const auto& l : layers) h = l.layer->forward(std::move(h), emb, ctx);
    return h;
  }
};

struct UNetArchitecture {
  TimestepEmbedding embedding{0, 0};
  std::vector<UNetBlock> blocks;  // paper blocks 1..2I+1: I input blocks, the middle, I output blocks
  int num_input_blocks = 0;       // I
  PlacedLayer out;                // paper block 0
  Shape input{1, 0, 0, 0};        // [1, in_channels, image_size, image_size]

  int num_blocks() const noexcept { return static_cast<int>(blocks.size()); }
  const UNetBlock& block(int b) const { return blocks[static_cast<std::size_t>(b - 1)]; }
  /// Declares (and, when the table holds weights, binds) every state-dict entry, in the order the
  /// official code registers them.
  void weights(WeightTable& table);
  /// Every state-dict entry, declared only (call it before binding: it leaves the ops unbound).
  std::vector<WeightSpec> weight_specs() {
    std::vector<WeightSpec> specs;
    WeightTable declare(specs);
    weights(declare);
    return specs;
  }
  /// The one shape walk (batch 1, the configured image size): visit(block, layer, input shape)
  /// for each layer of blocks 1..last in forward order, output blocks seeing their skip
  /// concatenated, then the output head as block 0 when `with_out`.
  using Visit = std::function<void(int block, const PlacedLayer& layer, const Shape& in)>;
  void walk(int last, bool with_out, const Visit& visit) const;
};

UNetArchitecture build_unet_architecture(const UNetConfig& config);

}  // namespace diffprobe::detail
