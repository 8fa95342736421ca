#include "diffprobe/model/unet_config.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/text.hpp"
#include "diffprobe/core/error.hpp"

namespace diffprobe {
namespace {

using nlohmann::json;

// List entries with spaces removed ("1, 2,2" -> {"1", "2", "2"}), as the official flags allow.
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  for (std::string part : detail::split(s)) {
    part.erase(std::remove(part.begin(), part.end(), ' '), part.end());
    out.push_back(std::move(part));
  }
  if (out.size() == 1 && out[0].empty()) out.clear();  // "" (or only spaces): no entries
  return out;
}

double parse_number(const std::string& s, const char* flag) {
  try {
    std::size_t used = 0;
    const double v = std::stod(s, &used);
    if (used != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw ConfigError("UNetConfig", std::string(flag) + ": '" + s + "' is not a number");
  }
}

std::string format_mult(const std::vector<double>& m) {
  std::string s;
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (i) s += ",";
    std::ostringstream os;
    os << m[i];
    s += os.str();
  }
  return s;
}

}  // namespace

std::vector<double> UNetConfig::channel_multipliers() const {
  if (channel_mult.empty()) {
    switch (image_size) {
      case 512: return {0.5, 1, 1, 2, 2, 4, 4};
      case 256: return {1, 1, 2, 2, 4, 4};
      case 128: return {1, 1, 2, 3, 4};
      case 64: return {1, 2, 3, 4};
      case 32: return {1, 2, 2, 2};
      default:
        throw ConfigError("UNetConfig", "channel_mult is empty and image_size " + std::to_string(image_size) +
                                            " has no default (give channel_mult, e.g. \"1,2,2\")");
    }
  }
  std::vector<double> m;
  for (const auto& part : split_commas(channel_mult)) {
    const double v = parse_number(part, "channel_mult");
    if (!(v > 0 && v <= 64))
      throw ConfigError("UNetConfig", "channel_mult entries must be in (0, 64], got '" + part + "'");
    m.push_back(v);
  }
  if (m.empty()) throw ConfigError("UNetConfig", "channel_mult '" + channel_mult + "' has no entries");
  if (m.size() > 12)
    throw ConfigError("UNetConfig", "channel_mult has " + std::to_string(m.size()) + " levels; at most 12");
  return m;
}

std::vector<int> UNetConfig::attention_downsample_factors() const {
  std::vector<int> ds;
  for (const auto& part : split_commas(attention_resolutions)) {
    if (part.empty()) continue;
    const double r = parse_number(part, "attention_resolutions");
    // Compared as doubles first: "1e20" must not reach an int conversion.
    if (!(r >= 1 && r <= image_size) || r != std::floor(r))
      throw ConfigError("UNetConfig", "attention_resolutions entry '" + part + "' must be an integer in 1.." +
                                          std::to_string(image_size));
    ds.push_back(image_size / static_cast<int>(r));  // as the official code: integer division
  }
  return ds;
}

int UNetConfig::heads_for(int channels, bool decoder) const {
  if (num_head_channels != -1) return channels / num_head_channels;
  if (decoder && num_heads_upsample != -1) return num_heads_upsample;
  return num_heads;
}

int UNetConfig::num_input_blocks() const {
  const int levels = static_cast<int>(channel_multipliers().size());
  return 1 + levels * num_res_blocks + (levels - 1);
}

void UNetConfig::validate() const {
  auto fail = [](const std::string& why) { throw ConfigError("UNetConfig", why); };
  // Upper bounds far above every published model (the largest: 512x512, 256 channels, 3 res
  // blocks), so that sizes computed from a hostile config cannot overflow.
  auto in = [&](const char* flag, long long v, long long lo, long long hi) {
    if (v < lo || v > hi)
      fail(std::string(flag) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
           std::to_string(v));
  };
  in("image_size", image_size, 1, 8192);
  in("in_channels", in_channels, 1, 64);
  in("num_channels", num_channels, 1, 8192);
  in("num_res_blocks", num_res_blocks, 1, 32);
  in("diffusion_steps", diffusion_steps, 1, 100000);
  in("num_heads", num_heads, 1, 1024);
  if (num_head_channels != -1) in("num_head_channels", num_head_channels, 1, 8192);
  if (num_heads_upsample != -1) in("num_heads_upsample", num_heads_upsample, 1, 1024);
  if (class_cond) in("num_classes", num_classes, 1, 1 << 20);
  if (noise_schedule != "linear" && noise_schedule != "cosine")
    fail("noise_schedule must be \"linear\" or \"cosine\", got \"" + noise_schedule + "\"");
  if (class_cond && num_classes < 1) fail("num_classes must be >= 1 for a class-conditional model");
  const auto mult = channel_multipliers();
  const int levels = static_cast<int>(mult.size());
  if ((image_size % (1 << (levels - 1))) != 0)
    fail("image_size " + std::to_string(image_size) + " is not divisible by 2^" + std::to_string(levels - 1) +
         " (" + std::to_string(levels) + " levels)");
  const auto ds = attention_downsample_factors();
  auto check_channels = [&](int ch, const std::string& where, bool attn, bool decoder) {
    if (ch % 32 != 0)
      fail(where + " has " + std::to_string(ch) + " channels, not divisible by GroupNorm's 32 groups");
    if (!attn) return;
    if (num_head_channels != -1) {
      if (num_head_channels < 1 || ch % num_head_channels != 0)
        fail(where + ": " + std::to_string(ch) + " channels not divisible by num_head_channels " +
             std::to_string(num_head_channels));
    } else {
      const int h = heads_for(ch, decoder);
      if (h < 1 || ch % h != 0)
        fail(where + ": " + std::to_string(ch) + " channels cannot be split into " + std::to_string(h) +
             " heads");
    }
  };
  for (int level = 0; level < levels; ++level) {
    const double c = mult[static_cast<std::size_t>(level)] * num_channels;
    if (c != std::floor(c))
      fail("channel_mult[" + std::to_string(level) + "] * num_channels is not an integer");
    if (c > 65536) fail("level " + std::to_string(level) + " would have " + std::to_string(c) + " channels");
    const int dsl = 1 << level;
    const bool attn = std::find(ds.begin(), ds.end(), dsl) != ds.end();
    check_channels(static_cast<int>(c), "level " + std::to_string(level), attn, false);
    check_channels(static_cast<int>(c), "decoder level " + std::to_string(level), attn, true);
  }
  check_channels(static_cast<int>(mult.back() * num_channels), "middle block", true, false);
  check_channels(static_cast<int>(mult[0] * num_channels), "input conv", false, false);
}

// ---- JSON ------------------------------------------------------------------------------------

UNetConfig UNetConfig::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ConfigError("UNetConfig::from_json", std::string("invalid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ConfigError("UNetConfig::from_json", "expected a JSON object of flags");
  UNetConfig c;
  static const std::set<std::string> ignored = {"use_checkpoint", "timestep_respacing",     "use_kl",
                                                "predict_xstart", "rescale_learned_sigmas", "out_channels"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (v.is_null() && (k == "num_classes" || k == "channel_mult")) continue;  // "default", as Python's None
    auto as_int = [&](int& dst) {
      // In int's range: get<int>() truncates, so 2^32 + 32 became 32 and passed validate().
      if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > INT_MAX) ||
          (!v.is_number_unsigned() && (v.get<std::int64_t>() < INT_MIN || v.get<std::int64_t>() > INT_MAX)))
        throw ConfigError("UNetConfig::from_json", k + " must be an integer (32-bit), got " + v.dump());
      dst = v.get<int>();
    };
    auto as_bool = [&](bool& dst) {
      if (!v.is_boolean()) throw ConfigError("UNetConfig::from_json", k + " must be true or false");
      dst = v.get<bool>();
    };
    auto as_list_string = [&](std::string& dst) {
      if (v.is_string()) {
        dst = v.get<std::string>();
      } else if (v.is_array()) {
        std::vector<double> xs;
        for (const auto& e : v) {
          if (!e.is_number()) throw ConfigError("UNetConfig::from_json", k + " must hold numbers");
          xs.push_back(e.get<double>());
        }
        dst = format_mult(xs);
      } else if (v.is_number()) {
        dst = format_mult({v.get<double>()});
      } else {
        throw ConfigError("UNetConfig::from_json", k + " must be a string like \"16,8\" or a list");
      }
    };
    if (k == "image_size")
      as_int(c.image_size);
    else if (k == "in_channels")
      as_int(c.in_channels);
    else if (k == "num_channels" || k == "model_channels")
      as_int(c.num_channels);
    else if (k == "num_res_blocks")
      as_int(c.num_res_blocks);
    else if (k == "attention_resolutions")
      as_list_string(c.attention_resolutions);
    else if (k == "channel_mult")
      as_list_string(c.channel_mult);
    else if (k == "num_heads")
      as_int(c.num_heads);
    else if (k == "num_head_channels")
      as_int(c.num_head_channels);
    else if (k == "num_heads_upsample")
      as_int(c.num_heads_upsample);
    else if (k == "use_scale_shift_norm")
      as_bool(c.use_scale_shift_norm);
    else if (k == "resblock_updown")
      as_bool(c.resblock_updown);
    else if (k == "use_new_attention_order")
      as_bool(c.use_new_attention_order);
    else if (k == "learn_sigma")
      as_bool(c.learn_sigma);
    else if (k == "class_cond")
      as_bool(c.class_cond);
    else if (k == "num_classes")
      as_int(c.num_classes);
    else if (k == "use_fp16")
      as_bool(c.use_fp16);
    else if (k == "dropout") {
      if (!v.is_number()) throw ConfigError("UNetConfig::from_json", "dropout must be a number");
      c.dropout = v.get<double>();
    } else if (k == "diffusion_steps")
      as_int(c.diffusion_steps);
    else if (k == "noise_schedule") {
      if (!v.is_string()) throw ConfigError("UNetConfig::from_json", "noise_schedule must be a string");
      c.noise_schedule = v.get<std::string>();
    } else if (k == "rescale_timesteps")
      as_bool(c.rescale_timesteps);
    else if (ignored.count(k))
      continue;
    else
      throw ConfigError("UNetConfig::from_json", "unknown flag '" + k + "'");
  }
  c.validate();
  return c;
}

UNetConfig UNetConfig::from_json_file(const std::filesystem::path& path) {
  std::ifstream f(path);
  if (!f) throw IoError("UNetConfig::from_json_file", "cannot open " + path.string());
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return from_json(ss.str());
  } catch (const ConfigError& e) {
    throw ConfigError(path.string(), e.why());
  }
}

std::string UNetConfig::to_json(int indent) const {
  json j = {{"image_size", image_size},
            {"in_channels", in_channels},
            {"num_channels", num_channels},
            {"num_res_blocks", num_res_blocks},
            {"attention_resolutions", attention_resolutions},
            {"channel_mult", channel_mult},
            {"num_heads", num_heads},
            {"num_head_channels", num_head_channels},
            {"num_heads_upsample", num_heads_upsample},
            {"use_scale_shift_norm", use_scale_shift_norm},
            {"resblock_updown", resblock_updown},
            {"use_new_attention_order", use_new_attention_order},
            {"learn_sigma", learn_sigma},
            {"class_cond", class_cond},
            {"num_classes", num_classes},
            {"use_fp16", use_fp16},
            {"dropout", dropout},
            {"diffusion_steps", diffusion_steps},
            {"noise_schedule", noise_schedule},
            {"rescale_timesteps", rescale_timesteps}};
  return j.dump(indent);
}

// ---- Presets ---------------------------------------------------------------------------------

namespace {

std::map<std::string, UNetConfig> make_presets() {
  std::map<std::string, UNetConfig> p;
  // guided-diffusion (ADM.md §1): learn_sigma, scale-shift, resblock_updown, 1000 steps.
  UNetConfig adm;
  adm.attention_resolutions = "32,16,8";
  adm.num_channels = 256;
  adm.num_res_blocks = 2;
  adm.num_head_channels = 64;
  adm.learn_sigma = true;
  adm.use_scale_shift_norm = true;
  adm.resblock_updown = true;
  adm.noise_schedule = "linear";

  UNetConfig u256 = adm;
  u256.image_size = 256;
  u256.use_fp16 = true;
  p["256x256_diffusion_uncond"] = u256;
  UNetConfig c256 = u256;
  c256.class_cond = true;
  p["256x256_diffusion"] = c256;
  UNetConfig bed = u256;
  bed.dropout = 0.1;
  p["lsun_bedroom"] = bed;
  p["lsun_cat"] = bed;
  p["lsun_horse"] = bed;

  UNetConfig c128 = adm;
  c128.image_size = 128;
  c128.num_head_channels = -1;
  c128.num_heads = 4;
  c128.class_cond = true;
  c128.use_fp16 = true;
  p["128x128_diffusion"] = c128;

  UNetConfig c64 = adm;
  c64.image_size = 64;
  c64.num_channels = 192;
  c64.num_res_blocks = 3;
  c64.class_cond = true;
  c64.use_new_attention_order = true;
  c64.noise_schedule = "cosine";
  c64.use_fp16 = true;
  c64.dropout = 0.1;
  p["64x64_diffusion"] = c64;

  UNetConfig c512 = adm;
  c512.image_size = 512;
  c512.class_cond = true;
  p["512x512_diffusion"] = c512;

  // improved-diffusion: Upsample/Downsample layers, num_heads, 4000 cosine steps unless said.
  UNetConfig imp;
  imp.learn_sigma = true;
  imp.use_scale_shift_norm = true;
  imp.resblock_updown = false;
  imp.num_heads = 4;
  imp.attention_resolutions = "16,8";
  imp.diffusion_steps = 4000;
  imp.noise_schedule = "cosine";

  UNetConfig cifar = imp;
  cifar.image_size = 32;
  cifar.num_channels = 128;
  cifar.num_res_blocks = 3;
  cifar.dropout = 0.3;
  cifar.rescale_timesteps = true;
  p["cifar10_uncond_50M_500K"] = cifar;

  UNetConfig in64u = imp;
  in64u.image_size = 64;
  in64u.num_channels = 128;
  in64u.num_res_blocks = 3;
  in64u.rescale_timesteps = true;
  p["imagenet64_uncond_100M_1500K"] = in64u;

  UNetConfig in64c = imp;
  in64c.image_size = 64;
  in64c.num_channels = 192;
  in64c.num_res_blocks = 3;
  in64c.class_cond = true;
  in64c.rescale_timesteps = false;
  p["imagenet64_cond_270M_250K"] = in64c;

  UNetConfig lsun = imp;
  lsun.image_size = 256;
  lsun.num_channels = 128;
  lsun.num_res_blocks = 2;
  lsun.num_heads = 1;
  lsun.attention_resolutions = "16";
  lsun.use_scale_shift_norm = false;
  lsun.diffusion_steps = 1000;
  lsun.noise_schedule = "linear";
  p["lsun_uncond_100M_1200K_bs128"] = lsun;

  // The bundled Fashion-MNIST model (tools/train/train_fmnist.py, docs/model.md).
  UNetConfig fm;
  fm.image_size = 32;
  fm.in_channels = 1;
  fm.num_channels = 32;
  fm.channel_mult = "1,2,2";
  fm.num_res_blocks = 2;
  fm.attention_resolutions = "16,8";
  fm.num_head_channels = 32;
  fm.use_scale_shift_norm = true;
  fm.resblock_updown = true;
  fm.learn_sigma = false;
  fm.diffusion_steps = 1000;
  fm.noise_schedule = "linear";
  p["fmnist_default"] = fm;
  return p;
}

const std::map<std::string, UNetConfig>& presets() {
  static const auto p = make_presets();
  return p;
}

}  // namespace

UNetConfig UNetConfig::preset(const std::string& name) {
  auto it = presets().find(name);
  if (it == presets().end()) {
    std::string names;
    for (const auto& [k, v] : presets()) names += (names.empty() ? "" : ", ") + k;
    throw ConfigError("UNetConfig::preset", "unknown preset '" + name + "' (known: " + names + ")");
  }
  return it->second;
}

std::vector<std::string> UNetConfig::preset_names() {
  std::vector<std::string> v;
  for (const auto& [k, c] : presets()) v.push_back(k);
  return v;
}

std::optional<std::string> UNetConfig::preset_for_filename(const std::string& filename) {
  const std::string stem = std::filesystem::path(filename).stem().string();
  if (presets().count(stem)) return stem;
  return std::nullopt;
}

}  // namespace diffprobe
