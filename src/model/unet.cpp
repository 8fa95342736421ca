// The ADM U-Net: architecture (mirroring the official UNetModel constructor), weight binding,
// and the forward pass that stops at the deepest requested block.
#include "diffprobe/model/unet.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "core/text.hpp"
#include "diffprobe/core/threads.hpp"
#include "diffprobe/diffusion/counter_noise.hpp"
#include "diffprobe/io/torch_checkpoint.hpp"
#include "diffprobe/ops/attention.hpp"
#include "diffprobe/ops/conv2d.hpp"
#include "diffprobe/ops/elementwise.hpp"
#include "diffprobe/ops/group_norm.hpp"
#include "diffprobe/ops/linear.hpp"

namespace diffprobe {
namespace {

// ---- Architecture description (no weights) --------------------------------------------------

enum class LayerKind { InConv, Res, Attn, Down, Up };

struct LayerDesc {
  LayerKind kind;
  std::string prefix;  // state-dict prefix, e.g. "input_blocks.3.0"
  int cin = 0, cout = 0;
  int resample = 0;  // ResBlock: -1 down, +1 up
  int heads = 0;     // Attn
};

struct BlockDesc {
  std::string name;
  std::vector<LayerDesc> layers;
};

struct ArchDesc {
  std::vector<BlockDesc> input, output;
  BlockDesc middle;
  int model_channels = 0, time_dim = 0, input_ch = 0, out_channels = 0;
};

ArchDesc describe(const UNetConfig& c) {
  c.validate();
  ArchDesc a;
  const auto mult = c.channel_multipliers();
  const auto attn_ds = c.attention_downsample_factors();
  const int mc = c.num_channels;
  a.model_channels = mc;
  a.time_dim = 4 * mc;
  a.out_channels = c.out_channels();
  auto has_attn = [&](int ds) { return std::find(attn_ds.begin(), attn_ds.end(), ds) != attn_ds.end(); };
  int ch = static_cast<int>(mult[0] * mc);
  a.input_ch = ch;
  a.input.push_back({"input_blocks.0", {{LayerKind::InConv, "input_blocks.0.0", c.in_channels, ch}}});
  std::vector<int> chans = {ch};
  int ds = 1;
  const int levels = static_cast<int>(mult.size());
  for (int level = 0; level < levels; ++level) {
    for (int r = 0; r < c.num_res_blocks; ++r) {
      const std::string p = "input_blocks." + std::to_string(a.input.size());
      BlockDesc b{p, {}};
      const int co = static_cast<int>(mult[static_cast<std::size_t>(level)] * mc);
      b.layers.push_back({LayerKind::Res, p + ".0", ch, co});
      ch = co;
      if (has_attn(ds)) b.layers.push_back({LayerKind::Attn, p + ".1", ch, ch, 0, c.heads_for(ch, false)});
      a.input.push_back(b);
      chans.push_back(ch);
    }
    if (level != levels - 1) {
      const std::string p = "input_blocks." + std::to_string(a.input.size());
      BlockDesc b{p, {}};
      if (c.resblock_updown)
        b.layers.push_back({LayerKind::Res, p + ".0", ch, ch, -1});
      else
        b.layers.push_back({LayerKind::Down, p + ".0", ch, ch});
      a.input.push_back(b);
      chans.push_back(ch);
      ds *= 2;
    }
  }
  a.middle = {"middle_block",
              {{LayerKind::Res, "middle_block.0", ch, ch},
               {LayerKind::Attn, "middle_block.1", ch, ch, 0, c.heads_for(ch, false)},
               {LayerKind::Res, "middle_block.2", ch, ch}}};
  for (int level = levels - 1; level >= 0; --level) {
    for (int i = 0; i <= c.num_res_blocks; ++i) {
      const std::string p = "output_blocks." + std::to_string(a.output.size());
      BlockDesc b{p, {}};
      const int ich = chans.back();
      chans.pop_back();
      const int co = static_cast<int>(mult[static_cast<std::size_t>(level)] * mc);
      b.layers.push_back({LayerKind::Res, p + ".0", ch + ich, co});
      ch = co;
      if (has_attn(ds)) b.layers.push_back({LayerKind::Attn, p + ".1", ch, ch, 0, c.heads_for(ch, true)});
      if (level && i == c.num_res_blocks) {
        const std::string rp = p + "." + std::to_string(b.layers.size());
        if (c.resblock_updown)
          b.layers.push_back({LayerKind::Res, rp, ch, ch, +1});
        else
          b.layers.push_back({LayerKind::Up, rp, ch, ch});
        ds /= 2;
      }
      a.output.push_back(b);
    }
  }
  return a;
}

void add_layer_specs(std::vector<WeightSpec>& s, const LayerDesc& l, const UNetConfig& c, int time_dim) {
  const auto& p = l.prefix;
  auto add = [&](const std::string& n, Shape sh) { s.push_back({p + "." + n, sh}); };
  switch (l.kind) {
    case LayerKind::InConv:
      add("weight", {l.cout, l.cin, 3, 3});
      add("bias", {l.cout});
      break;
    case LayerKind::Res:
      add("in_layers.0.weight", {l.cin});
      add("in_layers.0.bias", {l.cin});
      add("in_layers.2.weight", {l.cout, l.cin, 3, 3});
      add("in_layers.2.bias", {l.cout});
      add("emb_layers.1.weight", {c.use_scale_shift_norm ? 2 * l.cout : l.cout, time_dim});
      add("emb_layers.1.bias", {c.use_scale_shift_norm ? 2 * l.cout : l.cout});
      add("out_layers.0.weight", {l.cout});
      add("out_layers.0.bias", {l.cout});
      add("out_layers.3.weight", {l.cout, l.cout, 3, 3});
      add("out_layers.3.bias", {l.cout});
      if (l.cin != l.cout) {
        add("skip_connection.weight", {l.cout, l.cin, 1, 1});
        add("skip_connection.bias", {l.cout});
      }
      break;
    case LayerKind::Attn:
      add("norm.weight", {l.cin});
      add("norm.bias", {l.cin});
      add("qkv.weight", {3 * l.cin, l.cin, 1});
      add("qkv.bias", {3 * l.cin});
      add("proj_out.weight", {l.cin, l.cin, 1});
      add("proj_out.bias", {l.cin});
      break;
    case LayerKind::Down:
      add("op.weight", {l.cout, l.cin, 3, 3});
      add("op.bias", {l.cout});
      break;
    case LayerKind::Up:
      add("conv.weight", {l.cout, l.cin, 3, 3});
      add("conv.bias", {l.cout});
      break;
  }
}

std::string describe_layer(const LayerDesc& l) {
  switch (l.kind) {
    case LayerKind::InConv: return "Conv(" + std::to_string(l.cin) + "->" + std::to_string(l.cout) + ")";
    case LayerKind::Res:
      return std::string("ResBlock") +
             (l.resample < 0   ? "-down"
              : l.resample > 0 ? "-up"
                               : "") +
             "(" + std::to_string(l.cin) + "->" + std::to_string(l.cout) + ")";
    case LayerKind::Attn: return "Attention(" + std::to_string(l.heads) + " heads)";
    case LayerKind::Down: return "Downsample";
    case LayerKind::Up: return "Upsample";
  }
  return "?";
}

// ---- Bound layers (weights attached) --------------------------------------------------------

struct GN {
  Tensor gamma, beta;
};

struct Layer {
  LayerDesc desc;
  GN norm_in, norm_out;  // Res: in/out norms; Attn: norm_in
  ops::Conv2d conv_in, conv_out,
      skip;         // Res; InConv/Down/Up use conv_in; Attn: conv_in = qkv, conv_out = proj
  ops::Linear emb;  // Res
};

struct Block {
  std::string name;
  std::vector<Layer> layers;
};

}  // namespace

struct UNet::Impl {
  UNetConfig config;
  ArchDesc arch;
  std::vector<std::string> notes;
  io::NamedTensors weights;  // f32, contiguous; the ops hold references into these
  ops::Linear time0, time2;
  Tensor label_emb;
  std::vector<Block> input, output;
  Block middle;
  GN out_norm;
  ops::Conv2d out_conv;
  std::int64_t parameters = 0;

  ops::QkvOrder order() const {
    return config.use_new_attention_order ? ops::QkvOrder::Split : ops::QkvOrder::Legacy;
  }
  // Inputs are taken by value and moved along: a layer's input that nothing else holds can
  // then take the fused residual sum in place (Conv2d::forward_add).
  Tensor run_layer(const Layer& l, Tensor x, const Tensor& emb, const ExecContext& ctx) const;
  Tensor run_block(const Block& b, Tensor h, const Tensor& emb, const ExecContext& ctx) const {
    for (const auto& l : b.layers) h = run_layer(l, std::move(h), emb, ctx);
    return h;
  }
  /// Paper block b (1-based): input blocks, then the middle block, then output blocks.
  const Block& block(int b) const {
    const int I = static_cast<int>(input.size());
    return b <= I       ? input[static_cast<std::size_t>(b - 1)]
           : b == I + 1 ? middle
                        : output[static_cast<std::size_t>(b - I - 2)];
  }
};

namespace {

const float kGnEps = 1e-5f;

Tensor f32_contiguous(const Tensor& t) {
  Tensor c = t.dtype() == DType::F32 ? t : t.to_dtype(DType::F32);
  return c.layout() == Layout::Contiguous ? c : c.to_layout(Layout::Contiguous);
}

void check_block(int block, int num_blocks, const char* where) {
  if (block < 0 || block > num_blocks)
    throw ArgumentError(where, "block " + std::to_string(block) +
                                   " is out of range: this model has blocks 1.." +
                                   std::to_string(num_blocks) + " (and 0 = out)");
}

// What a forward to `blocks` runs: paper blocks 1..deepest, then the output head if 0 is asked.
struct Reach {
  int deepest = 0;
  bool want_out = false;
};
Reach reach_of(std::span<const int> blocks, int num_blocks, const char* where) {
  Reach r;
  for (const int b : blocks) {
    check_block(b, num_blocks, where);
    if (b == 0) r.want_out = true;
    r.deepest = std::max(r.deepest, b);
  }
  if (r.want_out) r.deepest = num_blocks;
  return r;
}

}  // namespace

Tensor UNet::Impl::run_layer(const Layer& l, Tensor x, const Tensor& emb, const ExecContext& ctx) const {
  switch (l.desc.kind) {
    case LayerKind::InConv:
    case LayerKind::Down: return l.conv_in.forward(x, ctx);
    case LayerKind::Up: return l.conv_in.forward(ops::upsample_nearest2x(x, ctx), ctx);
    case LayerKind::Attn: {
      ops::GroupNormArgs a;
      a.eps = kGnEps;
      Tensor qkv = l.conv_in.forward(ops::group_norm(x, l.norm_in.gamma, l.norm_in.beta, a, ctx), ctx);
      const Tensor att = ops::attention(qkv, l.desc.heads, order(), ctx);
      qkv = Tensor();
      return l.conv_out.forward_add(att, std::move(x), ctx);  // proj_out(a) + x, fused
    }
    case LayerKind::Res: {
      ops::GroupNormArgs a;
      a.eps = kGnEps;
      a.silu = true;
      a.avg_pool2x2 = l.desc.resample < 0;  // ResBlock-down: pool(silu(GN(x))) in one pass
      Tensor h = ops::group_norm(x, l.norm_in.gamma, l.norm_in.beta, a, ctx);
      Tensor xs;
      if (l.desc.resample < 0) {
        xs = ops::avg_pool2x2(x, ctx);
      } else if (l.desc.resample > 0) {
        h = ops::upsample_nearest2x(h, ctx);
        xs = ops::upsample_nearest2x(x, ctx);
      } else {
        xs = std::move(x);
      }
      x = Tensor();
      h = l.conv_in.forward(h, ctx);
      const Tensor e = l.emb.forward(emb, ctx, /*silu_input=*/true);
      ops::GroupNormArgs b;
      b.eps = kGnEps;
      b.silu = true;
      if (config.use_scale_shift_norm)
        b.scale_shift = e;
      else
        b.pre_bias = e;
      h = ops::group_norm(h, l.norm_out.gamma, l.norm_out.beta, b, ctx);
      if (l.skip.defined()) xs = l.skip.forward(xs, ctx);
      return l.conv_out.forward_add(h, std::move(xs), ctx);  // skip(x) + out_layers(h), fused
    }
  }
  throw ArgumentError("UNet", "unknown layer kind");
}

// ---- Construction ----------------------------------------------------------------------------

std::vector<WeightSpec> unet_weight_specs(const UNetConfig& c) {
  const ArchDesc a = describe(c);
  std::vector<WeightSpec> s;
  const int td = a.time_dim;
  s.push_back({"time_embed.0.weight", {td, a.model_channels}});
  s.push_back({"time_embed.0.bias", {td}});
  s.push_back({"time_embed.2.weight", {td, td}});
  s.push_back({"time_embed.2.bias", {td}});
  if (c.class_cond) s.push_back({"label_emb.weight", {c.num_classes, td}});
  for (const auto& b : a.input)
    for (const auto& l : b.layers) add_layer_specs(s, l, c, td);
  for (const auto& l : a.middle.layers) add_layer_specs(s, l, c, td);
  for (const auto& b : a.output)
    for (const auto& l : b.layers) add_layer_specs(s, l, c, td);
  s.push_back({"out.0.weight", {a.input_ch}});
  s.push_back({"out.0.bias", {a.input_ch}});
  s.push_back({"out.2.weight", {a.out_channels, a.input_ch, 3, 3}});
  s.push_back({"out.2.bias", {a.out_channels}});
  return s;
}

std::int64_t unet_num_parameters(const UNetConfig& config) {
  std::int64_t n = 0;
  for (const auto& s : unet_weight_specs(config)) n += s.shape.numel();
  return n;
}

namespace {

void validate_state_dict(const std::vector<WeightSpec>& specs, const io::NamedTensors& w) {
  std::vector<std::string> missing, misshaped, unexpected;
  std::set<std::string> known;
  for (const auto& s : specs) {
    known.insert(s.name);
    if (!w.contains(s.name)) {
      missing.push_back(s.name + " " + s.shape.str());
    } else {
      const Tensor& t = w.at(s.name);
      if (t.shape() != s.shape)
        misshaped.push_back(s.name + ": expected " + s.shape.str() + ", got " + t.shape().str());
      else if (!is_floating(t.dtype()))
        misshaped.push_back(s.name + ": expected a floating dtype, got " +
                            std::string(dtype_name(t.dtype())));
    }
  }
  for (const auto& [name, t] : w)
    if (!known.count(name)) unexpected.push_back(name + " " + t.shape().str());
  if (missing.empty() && misshaped.empty() && unexpected.empty()) return;
  std::ostringstream os;
  os << "the weights do not match the configuration";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n  " << v.size() << " " << what << ":";
    for (std::size_t i = 0; i < v.size() && i < 12; ++i) os << "\n    " << v[i];
    if (v.size() > 12) os << "\n    ... and " << v.size() - 12 << " more";
  };
  list("missing keys", missing);
  list("unexpected keys", unexpected);
  list("mis-shaped keys", misshaped);
  throw ConfigError("UNet::from_weights", os.str());
}

}  // namespace

UNet::UNet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UNet::UNet(UNet&&) noexcept = default;
UNet& UNet::operator=(UNet&&) noexcept = default;
UNet::~UNet() = default;

UNet UNet::from_weights(const UNetConfig& config, const io::NamedTensors& weights) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->arch = describe(config);
  const auto specs = unet_weight_specs(config);
  validate_state_dict(specs, weights);
  for (const auto& s : specs) {
    Tensor t = f32_contiguous(weights.at(s.name));
    // A NaN or infinity in a weight would make every feature NaN, silently: refuse it by name.
    const float* v = t.data<const float>();
    for (std::int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(v[i]))
        throw NumericError("UNet::from_weights",
                           "weight '" + s.name + "' holds " + (std::isnan(v[i]) ? "NaN" : "an infinity") +
                               " at index " + std::to_string(i) + " of " + t.shape().str());
    impl->parameters += t.numel();
    impl->weights.set(s.name, t);
  }
  const auto& W = impl->weights;
  auto w = [&](const std::string& n) { return W.at(n); };
  impl->time0 = ops::Linear(w("time_embed.0.weight"), w("time_embed.0.bias"));
  impl->time2 = ops::Linear(w("time_embed.2.weight"), w("time_embed.2.bias"));
  if (config.class_cond) impl->label_emb = w("label_emb.weight");
  auto bind = [&](const LayerDesc& d) {
    Layer l;
    l.desc = d;
    const std::string& p = d.prefix;
    switch (d.kind) {
      case LayerKind::InConv: l.conv_in = ops::Conv2d(w(p + ".weight"), w(p + ".bias")); break;
      case LayerKind::Down:
        l.conv_in = ops::Conv2d(w(p + ".op.weight"), w(p + ".op.bias"), {.stride = 2, .padding = 1});
        break;
      case LayerKind::Up: l.conv_in = ops::Conv2d(w(p + ".conv.weight"), w(p + ".conv.bias")); break;
      case LayerKind::Attn: {
        l.norm_in = {w(p + ".norm.weight"), w(p + ".norm.bias")};
        const Tensor q = w(p + ".qkv.weight");
        const Tensor o = w(p + ".proj_out.weight");
        l.conv_in = ops::Conv2d(q.reshape({q.dim(0), q.dim(1), 1, 1}), w(p + ".qkv.bias"),
                                {.stride = 1, .padding = 0});
        l.conv_out = ops::Conv2d(o.reshape({o.dim(0), o.dim(1), 1, 1}), w(p + ".proj_out.bias"),
                                 {.stride = 1, .padding = 0});
        break;
      }
      case LayerKind::Res:
        l.norm_in = {w(p + ".in_layers.0.weight"), w(p + ".in_layers.0.bias")};
        l.conv_in = ops::Conv2d(w(p + ".in_layers.2.weight"), w(p + ".in_layers.2.bias"));
        l.emb = ops::Linear(w(p + ".emb_layers.1.weight"), w(p + ".emb_layers.1.bias"));
        l.norm_out = {w(p + ".out_layers.0.weight"), w(p + ".out_layers.0.bias")};
        l.conv_out = ops::Conv2d(w(p + ".out_layers.3.weight"), w(p + ".out_layers.3.bias"));
        if (d.cin != d.cout)
          l.skip = ops::Conv2d(w(p + ".skip_connection.weight"), w(p + ".skip_connection.bias"),
                               {.stride = 1, .padding = 0});
        break;
    }
    return l;
  };
  auto bind_block = [&](const BlockDesc& bd) {
    Block b{bd.name, {}};
    for (const auto& d : bd.layers) b.layers.push_back(bind(d));
    return b;
  };
  for (const auto& bd : impl->arch.input) impl->input.push_back(bind_block(bd));
  impl->middle = bind_block(impl->arch.middle);
  for (const auto& bd : impl->arch.output) impl->output.push_back(bind_block(bd));
  impl->out_norm = {w("out.0.weight"), w("out.0.bias")};
  impl->out_conv = ops::Conv2d(w("out.2.weight"), w("out.2.bias"));
  impl->weights.metadata = weights.metadata;
  return UNet(std::move(impl));
}

UNet UNet::random(const UNetConfig& config, std::uint64_t seed) {
  // The library's counter-based normal noise (one stream per tensor), not std::normal_distribution,
  // whose values differ between standard libraries: a seed gives the same model everywhere.
  io::NamedTensors w;
  std::uint64_t index = 0;
  for (const auto& s : unet_weight_specs(config)) {
    Tensor t = Tensor::empty(s.shape);
    std::vector<float> normal(static_cast<std::size_t>(t.numel()));
    gaussian_noise({seed, index++, 0x5EED, 0}, normal.data(), t.numel());
    float* p = t.data<float>();
    const bool is_norm = s.shape.rank() == 1 && s.name.find(".weight") != std::string::npos;
    const bool is_bias = s.name.ends_with(".bias");
    double fan_in = 1;
    for (int i = 1; i < s.shape.rank(); ++i) fan_in *= static_cast<double>(s.shape[i]);
    const float scale = is_bias ? 0.05f : is_norm ? 0.1f : static_cast<float>(1.0 / std::sqrt(fan_in));
    for (std::int64_t i = 0; i < t.numel(); ++i)
      p[i] = (is_norm ? 1.0f : 0.0f) + scale * normal[static_cast<std::size_t>(i)];
    w.set(s.name, t);
  }
  return from_weights(config, w);
}

UNet UNet::load(const std::filesystem::path& path, const LoadOptions& options) {
  io::NamedTensors weights = io::load_weights(path);
  std::vector<std::string> notes;
  UNetConfig config;
  if (options.config) {
    config = *options.config;
    notes.push_back("config: given by the caller");
  } else if (options.preset) {
    config = UNetConfig::preset(*options.preset);
    notes.push_back("config: preset " + *options.preset);
  } else if (auto p = UNetConfig::preset_for_filename(path.filename().string())) {
    config = UNetConfig::preset(*p);
    notes.push_back("config: preset " + *p + " (from the file name)");
  } else if (weights.metadata.count("config")) {
    config = UNetConfig::from_json(weights.metadata.at("config"));
    notes.push_back("config: from the file's metadata");
  } else {
    UNetConfig base;
    if (options.image_size) base.image_size = *options.image_size;
    ConfigInference inf = infer_config(weights, base);
    config = inf.config;
    notes.push_back("config: inferred from the weights' shapes");
    for (const auto& s : inf.inferred) notes.push_back("  inferred " + s);
    for (const auto& s : inf.assumed) notes.push_back("  assumed " + s);
  }
  if (options.image_size && !options.config) config.image_size = *options.image_size;
  UNet net = from_weights(config, weights);
  net.impl_->notes = std::move(notes);
  return net;
}

// ---- Queries ---------------------------------------------------------------------------------

const UNetConfig& UNet::config() const noexcept { return impl_->config; }
const std::vector<std::string>& UNet::inference_notes() const noexcept { return impl_->notes; }
int UNet::num_input_blocks() const noexcept { return static_cast<int>(impl_->input.size()); }
int UNet::num_blocks() const noexcept { return 2 * num_input_blocks() + 1; }
std::int64_t UNet::num_parameters() const noexcept { return impl_->parameters; }

Shape UNet::input_shape(std::int64_t batch) const {
  return {batch, impl_->config.in_channels, impl_->config.image_size, impl_->config.image_size};
}

int parse_block(const std::string& text) {
  if (text == "out") return 0;
  if (const auto b = detail::parse_integer(text, 0, 9999)) return static_cast<int>(*b);
  throw ArgumentError("parse_block", "'" + text + "' is not a block number (1, 2, ..., or 0/out)");
}

namespace {

// Shape and cost propagation through one layer (batch given by `in`).
Shape layer_shape(const LayerDesc& l, const Shape& in, double& flops) {
  const std::int64_t N = in[0], H = in[2], W = in[3];
  auto conv = [&](std::int64_t ci, std::int64_t co, std::int64_t h, std::int64_t w, int k) {
    flops += 2.0 * static_cast<double>(N * co * h * w * ci * k * k);
  };
  switch (l.kind) {
    case LayerKind::InConv: conv(l.cin, l.cout, H, W, 3); return {N, l.cout, H, W};
    case LayerKind::Down: conv(l.cin, l.cout, H / 2, W / 2, 3); return {N, l.cout, H / 2, W / 2};
    case LayerKind::Up: conv(l.cin, l.cout, 2 * H, 2 * W, 3); return {N, l.cout, 2 * H, 2 * W};
    case LayerKind::Attn: {
      conv(l.cin, 3 * l.cin, H, W, 1);
      flops += ops::attention_flops({N, 3 * l.cin, H, W}, l.heads);
      conv(l.cin, l.cin, H, W, 1);
      return in;
    }
    case LayerKind::Res: {
      const std::int64_t h2 = l.resample < 0 ? H / 2 : l.resample > 0 ? 2 * H : H;
      const std::int64_t w2 = l.resample < 0 ? W / 2 : l.resample > 0 ? 2 * W : W;
      conv(l.cin, l.cout, h2, w2, 3);
      conv(l.cout, l.cout, h2, w2, 3);
      if (l.cin != l.cout) conv(l.cin, l.cout, h2, w2, 1);
      return {N, l.cout, h2, w2};
    }
  }
  return in;
}

}  // namespace

std::vector<BlockInfo> UNet::block_infos() const { return unet_block_infos(impl_->config); }

std::vector<BlockInfo> unet_block_infos(const UNetConfig& config) {
  const ArchDesc a = describe(config);
  const auto specs = unet_weight_specs(config);
  auto params_under = [&](const std::string& prefix) {
    std::int64_t n = 0;
    for (const auto& s : specs)
      if (s.name.starts_with(prefix + ".")) n += s.shape.numel();
    return n;
  };
  std::vector<BlockInfo> infos;
  Shape h{1, config.in_channels, config.image_size, config.image_size};
  std::vector<Shape> skips;
  auto run = [&](int number, const BlockDesc& bd) {
    BlockInfo info;
    info.block = number;
    info.name = bd.name;
    double flops = 0;
    for (const auto& l : bd.layers) {
      h = layer_shape(l, h, flops);
      info.description += (info.description.empty() ? "" : " + ") + describe_layer(l);
    }
    info.output_shape = h;
    info.parameters = params_under(bd.name);
    info.gflop = flops / 1e9;
    infos.push_back(info);
  };
  int number = 1;
  for (const auto& bd : a.input) {
    run(number++, bd);
    skips.push_back(h);
  }
  run(number++, a.middle);
  for (const auto& bd : a.output) {
    const Shape s = skips.back();
    skips.pop_back();
    h = Shape{h[0], h[1] + s[1], h[2], h[3]};
    run(number++, bd);
  }
  BlockInfo out;
  out.block = 0;
  out.name = "out";
  out.description =
      "GroupNorm + SiLU + Conv(" + std::to_string(a.input_ch) + "->" + std::to_string(a.out_channels) + ")";
  out.output_shape = {1, a.out_channels, h[2], h[3]};
  out.parameters = params_under("out");
  out.gflop = 2.0 * static_cast<double>(a.out_channels * h[2] * h[3] * a.input_ch * 9) / 1e9;
  infos.push_back(out);
  return infos;
}

Shape UNet::block_output_shape(int block, std::int64_t batch) const {
  check_block(block, num_blocks(), "UNet::block_output_shape");
  const auto infos = block_infos();
  const Shape s =
      block == 0 ? infos.back().output_shape : infos[static_cast<std::size_t>(block - 1)].output_shape;
  return {batch, s[1], s[2], s[3]};
}

// ---- Forward ---------------------------------------------------------------------------------

std::map<int, Tensor> UNet::forward(const Tensor& x_t, const Tensor& t, const Tensor& labels,
                                    std::span<const int> blocks, const ExecContext& ctx) const {
  return forward(x_t, t, labels, blocks, ctx, BlockCallback());
}

std::map<int, Tensor> UNet::forward(const Tensor& x_t, const Tensor& t, const Tensor& labels,
                                    std::span<const int> blocks, const ExecContext& ctx,
                                    const BlockCallback& on_block) const {
  constexpr const char* where = "UNet::forward";
  const auto& c = impl_->config;
  if (!x_t.defined()) throw ArgumentError(where, "x_t is undefined");
  if (x_t.dtype() != DType::F32)
    throw DTypeError(where, "x_t must be f32, got " + std::string(dtype_name(x_t.dtype())));
  if (!(x_t.device() == ctx.device))
    throw DeviceError(where,
                      "x_t is on " + x_t.device().str() + ", the context asks for " + ctx.device.str());
  const std::int64_t N = x_t.rank() == 4 ? x_t.dim(0) : 0;
  if (x_t.rank() != 4 || x_t.dim(1) != c.in_channels || x_t.dim(2) != c.image_size ||
      x_t.dim(3) != c.image_size)
    throw ShapeError(where, "x_t must be [N, " + std::to_string(c.in_channels) + ", " +
                                std::to_string(c.image_size) + ", " + std::to_string(c.image_size) +
                                "], got " + x_t.shape().str());
  if (N < 1) throw ShapeError(where, "x_t has an empty batch");
  if (!t.defined() || t.dtype() != DType::F32 || t.shape() != Shape{N})
    throw ShapeError(where, "t must be f32 [" + std::to_string(N) + "], got " + t.str());
  if (blocks.empty()) throw ArgumentError(where, "no block requested");
  const auto [deepest, want_out] = reach_of(blocks, num_blocks(), where);
  if (c.class_cond) {
    if (!labels.defined()) throw ArgumentError(where, "this model is class-conditional: labels are required");
    if (labels.dtype() != DType::I64 || labels.shape() != Shape{N})
      throw ShapeError(where, "labels must be i64 [" + std::to_string(N) + "], got " + labels.str());
    if (!labels.device().is_cpu()) throw DeviceError(where, "labels must be on the CPU");
    for (std::int64_t i = 0; i < N; ++i) {
      const std::int64_t y = labels.data<std::int64_t>()[i];
      if (y < 0 || y >= c.num_classes)
        throw ArgumentError(where, "label " + std::to_string(y) + " of sample " + std::to_string(i) +
                                       " outside [0, " + std::to_string(c.num_classes) + ")");
    }
  } else if (labels.defined()) {
    throw ArgumentError(where, "labels given, but this model is not class-conditional");
  }
  if (x_t.device().is_cpu()) {
    const Tensor xc = x_t;
    for (std::int64_t i = 0; i < xc.numel(); ++i) {
      const float v = xc.data<float>()[i];  // layout does not matter for a finiteness check
      if (!std::isfinite(v))
        throw NumericError(where, "x_t holds a non-finite value (" + std::to_string(v) + ")");
    }
    for (std::int64_t i = 0; i < N; ++i)
      if (!std::isfinite(t.data<float>()[i])) throw NumericError(where, "t holds a non-finite value");
  }

  // One pass for a planning allocator: every activation below is freed before it ends, except
  // the requested blocks' outputs, which escape to the caller.
  const AllocatorPass pass(ctx.allocator);
  ThreadScope threads(ctx.threads);
  // Embedding: t -> sinusoidal -> Linear -> SiLU -> Linear (+ label embedding).
  Tensor emb = ops::timestep_embedding(t, c.num_channels, ctx);
  emb = impl_->time0.forward(emb, ctx);
  emb = impl_->time2.forward(emb, ctx, /*silu_input=*/true);
  if (c.class_cond) {
    // Gather the label rows on the host (the table stays in host memory), then add them where
    // the embedding lives: in place on the CPU, through ops::add on a GPU.
    const std::int64_t D = emb.dim(1);
    const float* table = impl_->label_emb.data<float>();
    if (emb.device().is_cpu()) {
      float* e = emb.data<float>();
      for (std::int64_t i = 0; i < N; ++i) {
        const std::int64_t y = labels.data<std::int64_t>()[i];
        for (std::int64_t j = 0; j < D; ++j) e[i * D + j] += table[y * D + j];
      }
    } else {
      Tensor rows = Tensor::empty(Shape{N, D});
      for (std::int64_t i = 0; i < N; ++i)
        std::copy_n(table + labels.data<std::int64_t>()[i] * D, D, rows.data<float>() + i * D);
      emb = ops::add(emb, rows.to_device(emb.device()), ctx);
    }
  }

  const std::set<int> wanted(blocks.begin(), blocks.end());
  std::map<int, Tensor> result;
  const int I = num_input_blocks();
  std::vector<Tensor> skips(static_cast<std::size_t>(I));
  // Activations are NHWC end to end. A device tensor in NCHW is converted on the host (one
  // round trip of the input only; FeatureExtractor uploads NHWC directly).
  Tensor h = x_t.layout() == Layout::NHWC ? x_t
             : x_t.device().is_cpu()
                 ? x_t.to_layout(Layout::NHWC, ctx.allocator)
                 : x_t.to_device(Device::cpu()).to_layout(Layout::NHWC).to_device(x_t.device());
  for (int b = 1; b <= deepest; ++b) {
    if (b <= I) {
      h = impl_->run_block(impl_->block(b), std::move(h), emb, ctx);
      // Output block j consumes the skip of input block I-1-j, i.e. paper block 2I+1-(b-1).
      const int consumer = 2 * I + 2 - b;
      if (consumer <= deepest) skips[static_cast<std::size_t>(b - 1)] = h;
    } else if (b == I + 1) {
      h = impl_->run_block(impl_->block(b), std::move(h), emb, ctx);
    } else {
      const int j = b - I - 2;
      Tensor& skip = skips[static_cast<std::size_t>(I - 1 - j)];
      Tensor cat = ops::concat_channels(h, skip, ctx);
      skip = Tensor();  // released: nothing later needs it
      h = Tensor();
      h = impl_->run_block(impl_->block(b), std::move(cat), emb, ctx);
    }
    if (wanted.count(b)) result[b] = h;
    if (on_block) on_block(b, h);
  }
  if (want_out) {
    ops::GroupNormArgs a;
    a.eps = kGnEps;
    a.silu = true;
    const Tensor n = ops::group_norm(h, impl_->out_norm.gamma, impl_->out_norm.beta, a, ctx);
    result[0] = impl_->out_conv.forward(n, ctx);
    if (on_block) on_block(0, result[0]);
  }
  return result;
}

Tensor UNet::forward(const Tensor& x_t, const Tensor& t, const Tensor& labels, const ExecContext& ctx) const {
  const int out = 0;
  return forward(x_t, t, labels, std::span<const int>(&out, 1), ctx).at(0);
}

void UNet::prepare(const ExecContext& ctx) const {
  const int all = 0;
  prepare(ctx, std::span<const int>(&all, 1));
}

void UNet::prepare(const ExecContext& ctx, std::span<const int> blocks) const {
  const auto [deepest, want_out] = reach_of(blocks, num_blocks(), "UNet::prepare");
  impl_->time0.prepare(ctx);
  impl_->time2.prepare(ctx);
  // Each convolution is prepared for the shape it runs at for an image of the configured size
  // (batch 1), walking the forward's resolutions: the weight layout can depend on it (small maps
  // run as a matmul on the CPU). Another image size still works; a layer whose layout then
  // differs packs again on first use.
  std::int64_t side = config().image_size;
  const auto conv = [&](const ops::Conv2d& c, std::int64_t channels) {
    if (c.defined()) c.prepare(ctx, Shape{1, channels, side, side});
  };
  auto prep = [&](const Block& b) {
    for (const auto& l : b.layers) {
      const LayerDesc& d = l.desc;
      switch (d.kind) {
        case LayerKind::InConv: conv(l.conv_in, d.cin); break;
        case LayerKind::Down:
          conv(l.conv_in, d.cin);
          side = (side + 1) / 2;  // stride 2, padding 1
          break;
        case LayerKind::Up:
          side *= 2;
          conv(l.conv_in, d.cin);
          break;
        case LayerKind::Attn:  // qkv and proj_out, both on C channels
          conv(l.conv_in, d.cin);
          conv(l.conv_out, d.cin);
          break;
        case LayerKind::Res:
          side = d.resample < 0 ? side / 2 : d.resample > 0 ? side * 2 : side;
          conv(l.conv_in, d.cin);
          conv(l.conv_out, d.cout);
          conv(l.skip, d.cin);
          if (l.emb.defined()) l.emb.prepare(ctx);
          break;
      }
    }
  };
  // Only what a forward to the deepest block runs: packed weights of later blocks would only
  // hold memory.
  for (int b = 1; b <= deepest; ++b) prep(impl_->block(b));
  if (want_out) conv(impl_->out_conv, impl_->out_conv.in_channels());
}

}  // namespace diffprobe
