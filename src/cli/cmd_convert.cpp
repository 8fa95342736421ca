// `diffprobe convert`: any supported weights file -> safetensors (fp32, fp16 or bf16).
#include <fmt/core.h>

#include "cli/commands.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/io/torch_checkpoint.hpp"
#include "diffprobe/model/unet.hpp"
#include "io/atomic_file.hpp"

namespace diffprobe::cli {

Runner add_convert(CLI::App& app) {
  struct Opts {
    std::string in, out, dtype = "fp32", preset, config;
    bool no_check = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--weights,input", o->in, "input weights (safetensors, torch zip or legacy)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--out,-o", o->out, "output .safetensors file")->required();
  app.add_option("--dtype", o->dtype, "storage type of floating tensors: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "f32", "f16"}));
  app.add_option("--preset", o->preset, "validate against this preset and record its config");
  app.add_option("--config", o->config, "validate against this JSON config and record it")
      ->check(CLI::ExistingFile);
  app.add_flag("--no-check", o->no_check, "write the tensors without validating them as a U-Net");
  return [o]() {
    io::detail::check_writable(o->out);  // before reading gigabytes
    io::NamedTensors w = io::load_weights(o->in);
    fmt::print("read {} tensors from {} ({})\n", w.size(), o->in,
               io::weights_format_name(io::detect_weights_format(o->in)));
    if (!o->no_check) {
      LoadOptions lo;
      if (!o->preset.empty()) lo.preset = o->preset;
      if (!o->config.empty()) lo.config = UNetConfig::from_json_file(o->config);
      const UNet net = UNet::load(o->in, lo);  // strict validation of every key and shape
      w.metadata["config"] = net.config().to_json(-1);
      w.metadata["format"] = "diffprobe-unet";
      for (const auto& n : net.inference_notes()) fmt::print("{}\n", n);
    }
    w.metadata["converted_from"] = std::filesystem::path(o->in).filename().string();
    io::save_safetensors(o->out, w, parse_dtype(o->dtype));
    fmt::print("wrote {} ({})\n", o->out, o->dtype);
    return 0;
  };
}

}  // namespace diffprobe::cli
