#pragma once
// --int8-calibration, shared by the commands that run the U-Net in int8 (extract, sweep).
#include <CLI/CLI.hpp>
#include <string>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/model/int8_calibration.hpp"
#include "diffprobe/model/unet.hpp"

namespace diffprobe::cli {

struct Int8Flags {
  std::string calibration;

  void add_to(CLI::App& app) {
    app.add_option("--int8-calibration", calibration,
                   "with --precision int8: the input scales from `diffprobe calibrate` (default: each "
                   "image's own scale, found at run time)");
  }

  /// Loads the calibration into `net` (a file made for other weights is refused: ConfigError).
  void apply(UNet& net, const std::string& weights, Precision precision) const {
    if (calibration.empty()) return;
    if (precision != Precision::INT8) throw ArgumentError("--int8-calibration", "is for --precision int8");
    const Int8Calibration cal = Int8Calibration::load(calibration);
    if (!cal.weights_sha256.empty() && cal.weights_sha256 != file_sha256(weights))
      throw ConfigError("--int8-calibration", calibration + " was made for another weights file (sha256 " +
                                                  cal.weights_sha256.substr(0, 12) + "...), not " + weights);
    net.set_int8_calibration(cal);
  }
};

}  // namespace diffprobe::cli
