// `diffprobe calibrate`: the int8 precision's input scales, measured on the first images of a
// data set (noised as `extract` noises them), written as a small JSON file for
// `extract --precision int8 --int8-calibration FILE` (and sweep).
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>

#include "cli/commands.hpp"
#include "cli/model_flags.hpp"
#include "cli/parse_list.hpp"
#include "diffprobe/data/open_dataset.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/model/int8_calibration.hpp"
#include "io/atomic_file.hpp"

namespace diffprobe::cli {
namespace fs = std::filesystem;

Runner add_calibrate(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    std::string input, labels, t = "90", blocks = "out", method = "max", precision = "fp32",
                               preprocess = "adm", out;
    std::int64_t images = 64;
    std::uint64_t seed = 0;
    int batch = 16, threads = 0;
    std::optional<int> label;
  };
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  app.add_option("--input", o->input, "calibration images: image folder, .npy [N,C,H,W] or IDX images")
      ->required();
  app.add_option("--labels", o->labels, "labels (IDX or .npy; only to open the data set as extract does)");
  app.add_option("--images", o->images, "how many of the first images to calibrate on (default 64)")
      ->check(at_least(1));
  app.add_option("--t", o->t, "timesteps the images are noised to, comma-separated: those of the extraction");
  app.add_option("--blocks", o->blocks,
                 "deepest block the scales are needed for (default out: every int8 convolution)");
  app.add_option("--method", o->method,
                 "scale from the images' max |x|: max (default: the largest; nothing saturates) or mean")
      ->check(CLI::IsMember({"max", "mean"}));
  app.add_option("--precision", o->precision, "precision of the calibration forwards: fp32 (default) or bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--preprocess", o->preprocess, "image geometry: adm (default) or torchvision")
      ->check(CLI::IsMember({"adm", "torchvision"}));
  app.add_option("--noise-seed", o->seed, "seed of the counter-based noise")->check(at_least(0));
  app.add_option("--label", o->label, "class label for class-conditional models");
  app.add_option("--batch", o->batch, "images per U-Net pass")->check(at_least(1));
  app.add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(at_least(0));
  app.add_option("--out", o->out, "the calibration file to write (.json)")->required();
  return [o]() {
    const LoadOptions lo = o->model.checked_load_options();
    if (!fs::exists(o->input)) throw IoError("--input", "no such file or folder: " + o->input);
    io::detail::check_writable(o->out);
    const UNet net = UNet::load(o->model.weights, lo);
    ExtractOptions eo;
    eo.timesteps = parse_int_list(o->t, "--t");
    eo.blocks = parse_int_list(o->blocks, "--blocks", true);
    eo.noise_seed = o->seed;
    eo.label = o->label;
    eo.batch_size = o->batch;
    eo.exec.threads = o->threads;
    eo.exec.precision = parse_precision(o->precision.c_str());
    const FeatureExtractor fx(net, eo);
    const auto spec = data::InputSpec::from_shape(fx.input_spec());
    std::optional<fs::path> labels;
    if (!o->labels.empty()) labels = o->labels;
    const auto transform = data::Transform::eval(data::parse_preprocess(o->preprocess));
    auto ds = data::open_dataset(o->input, labels, spec, o->images, transform);
    ds->set_threads(o->threads);
    const std::int64_t n = std::min<std::int64_t>(o->images, ds->size());
    fmt::print(stderr, "calibrating int8 on {} images ({}) at t={}, blocks up to {}, method {}\n", n,
               ds->describe(), o->t, o->blocks, o->method);
    const auto start = std::chrono::steady_clock::now();
    Int8Calibration cal;
    {
      const Int8CalibrationRecorder recorder(net);
      for (std::int64_t b = 0; b < n; b += o->batch) {
        const std::int64_t e = std::min(n, b + o->batch);
        (void)fx.extract(ds->images(b, e), b);
      }
      cal = recorder.result(parse_int8_scale_method(o->method));
    }
    cal.images = n;
    cal.timesteps = eo.timesteps;
    cal.weights_sha256 = file_sha256(o->model.weights);
    cal.save(o->out);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "{} of {} int8 convolutions calibrated in {:.1f} s; wrote {}\n", cal.scales.size(),
               net.int8_convolutions().size(), s, o->out);
    return 0;
  };
}

}  // namespace diffprobe::cli
