// `diffprobe info`: configuration and per-block shapes, parameters and cost.
#include <fmt/core.h>

#include <optional>

#include "cli/commands.hpp"
#include "diffprobe/model/unet.hpp"

namespace diffprobe::cli {

Runner add_info(CLI::App& app) {
  struct Opts {
    std::string weights, preset, config;
    int image_size = 0;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--weights", o->weights, "weights file (safetensors, torch zip or legacy)")
      ->check(CLI::ExistingFile);
  app.add_option("--preset", o->preset, "a preset name (e.g. 256x256_diffusion_uncond)");
  app.add_option("--config", o->config, "a JSON file of official flags")->check(CLI::ExistingFile);
  app.add_option("--image-size", o->image_size, "image size, when the config is inferred from the weights")
      ->check(at_least(1));
  return [o]() {
    if (o->weights.empty() && o->preset.empty() && o->config.empty())
      throw ArgumentError("diffprobe info", "give --weights FILE, --preset NAME or --config FILE.json");
    UNetConfig config;
    std::vector<std::string> notes;
    std::int64_t params = 0;
    std::optional<UNet> net;
    if (!o->weights.empty()) {
      LoadOptions lo;
      if (!o->preset.empty()) lo.preset = o->preset;
      if (!o->config.empty()) lo.config = UNetConfig::from_json_file(o->config);
      if (o->image_size > 0) lo.image_size = o->image_size;
      net.emplace(UNet::load(o->weights, lo));
      config = net->config();
      notes = net->inference_notes();
      params = net->num_parameters();
    } else {
      config = o->config.empty() ? UNetConfig::preset(o->preset) : UNetConfig::from_json_file(o->config);
      if (o->image_size > 0) config.image_size = o->image_size;
      config.validate();
      params = unet_num_parameters(config);
      notes.push_back(o->config.empty() ? "config: preset " + o->preset : "config: " + o->config);
    }
    for (const auto& n : notes) fmt::print("{}\n", n);
    fmt::print("{}\n", config.to_json());
    const auto infos = unet_block_infos(config);
    fmt::print("parameters: {}\ninput blocks: {}, blocks 1..{} (0 = out)\n", params,
               config.num_input_blocks(), config.num_blocks());
    fmt::print("{:>5}  {:<18} {:<20} {:>12} {:>9}  {}\n", "block", "name", "output [C,H,W]", "parameters",
               "GFLOP", "layers");
    double total = 0;
    for (const auto& i : infos) {
      total += i.gflop;
      const auto& s = i.output_shape;
      fmt::print("{:>5}  {:<18} {:<20} {:>12} {:>9.2f}  {}\n",
                 i.block == 0 ? std::string("out") : std::to_string(i.block), i.name,
                 fmt::format("{}x{}x{}", s[1], s[2], s[3]), i.parameters, i.gflop, i.description);
    }
    fmt::print("total: {:.1f} GFLOP per image (2*MAC), plus the time embedding\n", total);
    return 0;
  };
}

}  // namespace diffprobe::cli
