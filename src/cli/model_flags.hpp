#pragma once
// The flags that name a U-Net to load (--weights, --preset, --config, --image-size), shared by
// the commands that run one (extract, sweep).
#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>

#include "cli/commands.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/model/unet.hpp"

namespace diffprobe::cli {

struct ModelFlags {
  std::string weights, preset, config;
  int image_size = 0;
  bool no_mmap = false;

  void add_to(CLI::App& app) {
    app.add_option("--weights", weights, "U-Net weights (safetensors, torch zip or legacy)")->required();
    app.add_option("--preset", preset,
                   "model preset (default: from the file name or metadata, else inferred)");
    app.add_option("--config", config, "model config JSON (official flag names)");
    app.add_option("--image-size", image_size, "image size when the config is inferred from the weights")
        ->check(at_least(1));
    app.add_flag("--no-mmap", no_mmap,
                 "read the weights file into memory instead of mapping it (a mapped file that is "
                 "truncated while in use stops the process with SIGBUS)");
  }

  /// The load options the flags give (reading --config), after checking that --weights exists.
  LoadOptions checked_load_options() const {
    LoadOptions lo;
    if (!preset.empty()) lo.preset = preset;
    if (!config.empty()) lo.config = UNetConfig::from_json_file(config);
    if (image_size > 0) lo.image_size = image_size;
    if (no_mmap) lo.file_access = io::FileAccess::Read;
    if (!std::filesystem::exists(weights)) throw IoError("--weights", "no such file: " + weights);
    return lo;
  }
};

}  // namespace diffprobe::cli
