#include "model/unet_architecture.hpp"

#include <algorithm>

#include "model/layers/attention_block.hpp"
#include "model/layers/input_conv.hpp"
#include "model/layers/output_head.hpp"
#include "model/layers/res_block.hpp"
#include "model/layers/resample.hpp"

namespace diffprobe::detail {

UNetArchitecture build_unet_architecture(const UNetConfig& c) {
  c.validate();
  UNetArchitecture a;
  const auto mult = c.channel_multipliers();
  const auto attn_ds = c.attention_downsample_factors();
  const int mc = c.num_channels;
  a.embedding = TimestepEmbedding(mc, c.class_cond ? c.num_classes : 0);
  a.input = Shape{1, c.in_channels, c.image_size, c.image_size};
  const int emb_dim = a.embedding.dim();
  const auto order = c.use_new_attention_order ? ops::QkvOrder::Split : ops::QkvOrder::Legacy;
  const auto has_attn = [&](int ds) {
    return std::find(attn_ds.begin(), attn_ds.end(), ds) != attn_ds.end();
  };
  const auto res = [&](int cin, int cout, ResBlock::Resample r = ResBlock::Resample::None) {
    return std::make_unique<ResBlock>(cin, cout, emb_dim, c.use_scale_shift_norm, r);
  };
  const auto attn = [&](int ch, bool upsampling_path) {
    return std::make_unique<AttentionBlock>(ch, c.heads_for(ch, upsampling_path), order);
  };
  // A block named `name` whose layers are `name.0`, `name.1`, ... in the order added.
  struct Builder {
    UNetBlock b;
    void add(std::unique_ptr<Layer> l) {
      b.layers.push_back({b.name + "." + std::to_string(b.layers.size()), std::move(l)});
    }
  };

  int ch = static_cast<int>(mult[0] * mc);
  std::vector<UNetBlock> input, output;
  Builder first{{"input_blocks.0", {}}};
  first.add(std::make_unique<InputConv>(c.in_channels, ch));
  input.push_back(std::move(first.b));
  std::vector<int> chans = {ch};
  int ds = 1;
  const int levels = static_cast<int>(mult.size());
  for (int level = 0; level < levels; ++level) {
    const int co = static_cast<int>(mult[static_cast<std::size_t>(level)] * mc);
    for (int r = 0; r < c.num_res_blocks; ++r) {
      Builder b{{"input_blocks." + std::to_string(input.size()), {}}};
      b.add(res(ch, co));
      ch = co;
      if (has_attn(ds)) b.add(attn(ch, false));
      input.push_back(std::move(b.b));
      chans.push_back(ch);
    }
    if (level != levels - 1) {
      Builder b{{"input_blocks." + std::to_string(input.size()), {}}};
      if (c.resblock_updown)
        b.add(res(ch, ch, ResBlock::Resample::Down));
      else
        b.add(std::make_unique<Downsample>(ch));
      input.push_back(std::move(b.b));
      chans.push_back(ch);
      ds *= 2;
    }
  }
  Builder middle{{"middle_block", {}}};
  middle.add(res(ch, ch));
  middle.add(attn(ch, false));
  middle.add(res(ch, ch));
  for (int level = levels - 1; level >= 0; --level) {
    const int co = static_cast<int>(mult[static_cast<std::size_t>(level)] * mc);
    for (int i = 0; i <= c.num_res_blocks; ++i) {
      Builder b{{"output_blocks." + std::to_string(output.size()), {}}};
      b.add(res(ch + chans.back(), co));  // the skip of the matching input block is concatenated
      chans.pop_back();
      ch = co;
      if (has_attn(ds)) b.add(attn(ch, true));
      if (level && i == c.num_res_blocks) {
        if (c.resblock_updown)
          b.add(res(ch, ch, ResBlock::Resample::Up));
        else
          b.add(std::make_unique<Upsample>(ch));
        ds /= 2;
      }
      output.push_back(std::move(b.b));
    }
  }
  a.num_input_blocks = static_cast<int>(input.size());
  for (auto& b : input) a.blocks.push_back(std::move(b));
  a.blocks.push_back(std::move(middle.b));
  for (auto& b : output) a.blocks.push_back(std::move(b));
  a.out = {"out", std::make_unique<OutputHead>(static_cast<int>(mult[0] * mc), c.out_channels())};
  return a;
}

void UNetArchitecture::weights(WeightTable& table) {
  embedding.weights(table);
  for (auto& b : blocks)
    for (auto& l : b.layers) {
      WeightTable scoped = table.scoped(l.prefix);
      l.layer->weights(scoped);
    }
  WeightTable scoped = table.scoped(out.prefix);
  out.layer->weights(scoped);
}

void UNetArchitecture::walk(int last, bool with_out, const Visit& visit) const {
  Shape h = input;
  std::vector<Shape> skips;
  for (int b = 1; b <= last; ++b) {
    if (b > num_input_blocks + 1) {  // an output block: its input is h ++ the matching skip
      const Shape& s = skips.back();
      h = Shape{h[0], h[1] + s[1], h[2], h[3]};
      skips.pop_back();
    }
    for (const auto& l : block(b).layers) {
      visit(b, l, h);
      h = l.layer->output_shape(h);
    }
    if (b <= num_input_blocks) skips.push_back(h);
  }
  if (with_out) visit(0, out, h);
}

}  // namespace diffprobe::detail
