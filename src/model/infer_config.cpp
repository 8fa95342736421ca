// Reads a U-Net configuration off a state dict's key names and shapes.
#include <algorithm>
#include <set>
#include <sstream>

#include "core/text.hpp"
#include "diffprobe/model/unet_config.hpp"

namespace diffprobe {
namespace {

int count_entries(const io::NamedTensors& w, const std::string& list) {
  std::set<int> idx;
  const std::string pre = list + ".";
  for (const auto& [name, t] : w) {
    if (!name.starts_with(pre)) continue;
    const auto rest = name.substr(pre.size());
    const auto dot = rest.find('.');
    const auto i = detail::parse_integer(rest.substr(0, dot), 0, 1'000'000);
    if (!i) throw ConfigError("infer_config", "unexpected key '" + name + "'");
    idx.insert(static_cast<int>(*i));
  }
  if (idx.empty()) return 0;
  if (*idx.begin() != 0 || *idx.rbegin() != static_cast<int>(idx.size()) - 1)
    throw ConfigError("infer_config", list + " indices are not contiguous from 0");
  return static_cast<int>(idx.size());
}

const Tensor& need(const io::NamedTensors& w, const std::string& name) {
  if (!w.contains(name))
    throw ConfigError("infer_config", "cannot infer the configuration: key '" + name + "' is missing");
  return w.at(name);
}

std::string fmt_double(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

ConfigInference infer_config(const io::NamedTensors& w, const UNetConfig& base) {
  ConfigInference r;
  UNetConfig& c = r.config;
  c = base;
  const Tensor& te = need(w, "time_embed.0.weight");
  if (te.rank() != 2)
    throw ConfigError("infer_config", "time_embed.0.weight must be 2-D, got " + te.shape().str());
  c.num_channels = static_cast<int>(te.dim(1));
  r.inferred.push_back("num_channels = " + std::to_string(c.num_channels) + " (time_embed.0.weight " +
                       te.shape().str() + ")");
  const Tensor& in0 = need(w, "input_blocks.0.0.weight");
  if (in0.rank() != 4) throw ConfigError("infer_config", "input_blocks.0.0.weight must be 4-D");
  c.in_channels = static_cast<int>(in0.dim(1));
  r.inferred.push_back("in_channels = " + std::to_string(c.in_channels));
  const Tensor& out = need(w, "out.2.weight");
  const int oc = static_cast<int>(out.dim(0));
  if (oc == 2 * c.in_channels)
    c.learn_sigma = true;
  else if (oc == c.in_channels)
    c.learn_sigma = false;
  else
    throw ConfigError("infer_config", "out.2.weight has " + std::to_string(oc) + " output channels for " +
                                          std::to_string(c.in_channels) + " input channels");
  r.inferred.push_back(std::string("learn_sigma = ") + (c.learn_sigma ? "true" : "false"));
  c.class_cond = w.contains("label_emb.weight");
  if (c.class_cond) c.num_classes = static_cast<int>(w.at("label_emb.weight").dim(0));
  r.inferred.push_back(std::string("class_cond = ") +
                       (c.class_cond ? "true (" + std::to_string(c.num_classes) + " classes)" : "false"));

  const int I = count_entries(w, "input_blocks");
  const int O = count_entries(w, "output_blocks");
  if (I < 2 || O != I)
    throw ConfigError("infer_config", "expected as many output blocks as input blocks (>= 2), got " +
                                          std::to_string(I) + " and " + std::to_string(O));
  // The first decoder entry with a resampler sits at index num_res_blocks.
  int nrb = -1;
  bool updown = false;
  for (int j = 0; j < O && nrb < 0; ++j) {
    const std::string p = "output_blocks." + std::to_string(j);
    for (int k : {1, 2}) {
      const std::string q = p + "." + std::to_string(k);
      if (w.contains(q + ".conv.weight")) {
        nrb = j;
        updown = false;
      } else if (w.contains(q + ".in_layers.2.weight")) {
        nrb = j;
        updown = true;
      }
    }
  }
  int levels = 1;
  if (nrb < 0) {  // a single level: no resampler anywhere
    nrb = I - 1;
  } else {
    if (I % (nrb + 1) != 0) throw ConfigError("infer_config", "inconsistent block counts");
    levels = I / (nrb + 1);
  }
  if (1 + levels * nrb + (levels - 1) != I) throw ConfigError("infer_config", "inconsistent block counts");
  c.num_res_blocks = nrb;
  c.resblock_updown = updown;
  r.inferred.push_back("num_res_blocks = " + std::to_string(nrb) + ", levels = " + std::to_string(levels));
  r.inferred.push_back(std::string("resblock_updown = ") + (updown ? "true" : "false"));

  std::string mult;
  std::vector<int> attn_ds;
  for (int level = 0; level < levels; ++level) {
    const int idx = 1 + level * (nrb + 1);
    const std::string p = "input_blocks." + std::to_string(idx);
    const Tensor& conv = need(w, p + ".0.out_layers.3.weight");
    if (level) mult += ',';
    mult += fmt_double(static_cast<double>(conv.dim(0)) / c.num_channels);
    if (w.contains(p + ".1.qkv.weight")) attn_ds.push_back(1 << level);
  }
  c.channel_mult = mult;
  r.inferred.push_back("channel_mult = \"" + mult + "\"");
  const Tensor& emb = need(w, "input_blocks.1.0.emb_layers.1.weight");
  const Tensor& c1 = need(w, "input_blocks.1.0.out_layers.3.weight");
  c.use_scale_shift_norm = emb.dim(0) == 2 * c1.dim(0);
  r.inferred.push_back(std::string("use_scale_shift_norm = ") + (c.use_scale_shift_norm ? "true" : "false"));
  // Comma-joined; built with += (GCC 12 warns falsely, -Wrestrict, on `"" + std::string`).
  auto join = [](const std::vector<int>& v, auto f) {
    std::string s;
    for (int x : v) {
      if (!s.empty()) s += ',';
      s += std::to_string(f(x));
    }
    return s;
  };
  // Ascending ds = descending resolutions, as the presets write them.
  const std::string res = join(attn_ds, [&](int ds) { return c.image_size / ds; });
  c.attention_resolutions = res;
  r.inferred.push_back("attention at downsample factors {" + join(attn_ds, [](int d) { return d; }) +
                       "} -> attention_resolutions \"" + res + "\" for image_size " +
                       std::to_string(c.image_size));
  r.assumed.push_back("image_size = " + std::to_string(c.image_size) +
                      " (shapes do not tell; give --image-size or a preset)");
  r.assumed.push_back("num_heads = " + std::to_string(c.num_heads) +
                      ", num_head_channels = " + std::to_string(c.num_head_channels) +
                      ", use_new_attention_order = " + (c.use_new_attention_order ? "true" : "false") +
                      " (shapes do not tell)");
  r.assumed.push_back("noise_schedule = " + c.noise_schedule +
                      ", diffusion_steps = " + std::to_string(c.diffusion_steps));
  c.validate();
  return r;
}

}  // namespace diffprobe
