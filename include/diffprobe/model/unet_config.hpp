#pragma once
// The U-Net's configuration, in the flag names of the official guided-diffusion /
// improved-diffusion scripts, so users can paste the flags they know.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "diffprobe/io/named_tensors.hpp"

namespace diffprobe {

struct UNetConfig {
  int image_size = 64;
  int in_channels = 3;
  int num_channels = 128;  // model width "mc"
  int num_res_blocks = 2;
  std::string attention_resolutions = "16,8";
  std::string channel_mult;  // "" = by image size (ADM.md §1)
  int num_heads = 4;
  int num_head_channels = -1;
  int num_heads_upsample = -1;
  bool use_scale_shift_norm = true;
  bool resblock_updown = false;
  bool use_new_attention_order = false;
  bool learn_sigma = false;
  bool class_cond = false;
  int num_classes = 1000;  // used when class_cond
  bool use_fp16 =
      false;             // how the model was trained; diffprobe computes in fp32 (see docs/model_numerics.md)
  double dropout = 0.0;  // ignored at inference
  // Diffusion flags that travel with the model.
  int diffusion_steps = 1000;
  std::string noise_schedule = "linear";  // "linear" | "cosine"
  bool rescale_timesteps = false;

  // ---- Derived quantities ----
  int out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  /// channel_mult resolved ("" -> default by image size). ConfigError when there is none.
  std::vector<double> channel_multipliers() const;
  /// attention_resolutions as downsample factors ds = image_size / res.
  std::vector<int> attention_downsample_factors() const;
  /// Heads of an attention block with `channels` channels (encoder/middle, or decoder).
  int heads_for(int channels, bool decoder) const;
  int num_input_blocks() const;                                  // I
  int num_blocks() const { return 2 * num_input_blocks() + 1; }  // paper's blocks 1..2I+1

  /// Throws ConfigError naming the offending flag.
  void validate() const;

  /// JSON with the official flag names (unknown keys -> ConfigError; missing keys keep defaults).
  static UNetConfig from_json(const std::string& json_text);
  static UNetConfig from_json_file(const std::filesystem::path& path);
  std::string to_json(int indent = 2) const;

  /// Presets: one per published checkpoint (name = the file stem, e.g. "256x256_diffusion_uncond")
  /// plus "fmnist_default" (the bundled model). ConfigError listing the names when unknown.
  static UNetConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();
  /// The preset whose name is a prefix/stem of a file name ("256x256_diffusion_uncond.pt"), if any.
  static std::optional<std::string> preset_for_filename(const std::string& filename);

  friend bool operator==(const UNetConfig&, const UNetConfig&) = default;
};

/// Which flags were read off the weights' shapes and which were assumed.
struct ConfigInference {
  UNetConfig config;
  std::vector<std::string> inferred;  // "num_channels = 256 (time_embed.0.weight)", ...
  std::vector<std::string> assumed;   // flags the shapes cannot tell (num_heads, image_size, ...)
};

/// Reads channels, channel_mult, num_res_blocks, attention placement, class_cond, learn_sigma,
/// in_channels, use_scale_shift_norm and resblock_updown off a state dict. Flags that shapes
/// cannot determine come from `base` (image_size, heads, attention order, schedule).
ConfigInference infer_config(const io::NamedTensors& weights, const UNetConfig& base = {});

}  // namespace diffprobe
