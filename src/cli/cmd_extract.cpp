// `diffprobe extract`: dataset -> U-Net block features -> a feature file (resumable).
#include <fmt/core.h>

#include <filesystem>
#include <memory>

#include "cli/commands.hpp"
#include "cli/parse_list.hpp"
#include "cli/progress.hpp"
#include "diffprobe/data/idx_dataset.hpp"
#include "diffprobe/data/image_folder.hpp"
#include "diffprobe/data/npy_dataset.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/features/feature_file.hpp"

namespace diffprobe::cli {
namespace fs = std::filesystem;

namespace {

std::unique_ptr<data::Dataset> open_dataset(const std::string& input, const std::string& labels,
                                            const data::InputSpec& spec, std::int64_t limit,
                                            const data::Transform& transform) {
  if (fs::is_directory(input)) {
    if (!labels.empty())
      throw ArgumentError("--labels", "an image folder takes its labels from its sub-folders");
    return std::make_unique<data::ImageFolder>(input, spec, transform);
  }
  if (!fs::exists(input)) throw IoError("--input", "no such file or folder: " + input);
  if (fs::path(input).extension() == ".npy") {
    if (transform.random())
      throw ArgumentError("--augment",
                          "a .npy input holds model inputs as they are; augmentation needs images "
                          "(an image folder or an IDX file)");
    std::optional<fs::path> l;
    if (!labels.empty()) l = labels;
    return std::make_unique<data::NpyDataset>(input, l);
  }
  std::optional<fs::path> l;
  if (!labels.empty()) l = labels;
  data::IdxOptions o;
  o.limit = limit;
  o.transform = transform;
  return std::make_unique<data::IdxDataset>(input, l, spec, o);
}

// Output rows [begin, end) with `copies` augmented copies of n samples, copy-major: row r is
// copy r / n (the transform's epoch) of sample r % n.
Tensor rows_of(data::Dataset& ds, std::int64_t n, std::int64_t begin, std::int64_t end) {
  if (begin / n == (end - 1) / n) {  // one copy: a plain batch
    ds.set_epoch(begin / n);
    return ds.images(begin % n, (end - 1) % n + 1);
  }
  const auto spec = ds.spec();
  Tensor out = Tensor::empty(Shape{end - begin, spec.channels, spec.size, spec.size}, DType::F32);
  const std::int64_t per = std::int64_t{spec.channels} * spec.size * spec.size;
  for (std::int64_t r = begin; r < end;) {
    const std::int64_t k = r / n, i0 = r % n, i1 = std::min(n, i0 + (end - r));
    ds.set_epoch(k);
    const Tensor part = ds.images(i0, i1);
    std::copy(part.data<float>(), part.data<float>() + part.numel(), out.data<float>() + (r - begin) * per);
    r += i1 - i0;
  }
  return out;
}

std::optional<Tensor> labels_of(const std::optional<Tensor>& labels, std::int64_t n, std::int64_t begin,
                                std::int64_t end) {
  if (!labels) return std::nullopt;
  Tensor out = Tensor::empty(Shape{end - begin}, DType::I64);
  for (std::int64_t r = begin; r < end; ++r)
    out.data<std::int64_t>()[r - begin] = labels->data<std::int64_t>()[r % n];
  return out;
}

}  // namespace

Runner add_extract(CLI::App& app) {
  struct Opts {
    std::string weights, preset, config, input, labels,
        t = "90", blocks = "24", pool = "avg:2", device = "cpu", out, precision = "fp32", dtype = "fp32",
        preprocess = "adm", augment = "none";
    std::uint64_t seed = 0, augment_seed = 0;
    int copies = 1;
    bool no_noise = false;
    int draws = 1, batch = 16, threads = 0, image_size = 0;
    std::optional<int> label;
    std::int64_t limit = 0, chunk = 0;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--weights", o->weights, "U-Net weights (safetensors, torch zip or legacy)")->required();
  app.add_option("--preset", o->preset,
                 "model preset (default: from the file name or metadata, else inferred)");
  app.add_option("--config", o->config, "model config JSON (official flag names)");
  app.add_option("--image-size", o->image_size, "image size when the config is inferred from the weights")
      ->check(at_least(1));
  app.add_option("--input", o->input,
                 "image folder (one sub-folder per class), .npy [N,C,H,W] or IDX images file")
      ->required();
  app.add_option("--labels", o->labels, "labels: IDX labels file (with IDX input) or .npy (with .npy input)");
  app.add_option("--preprocess", o->preprocess,
                 "image geometry: adm (guided-diffusion's center_crop_arr, as the paper; default) or "
                 "torchvision (Resize + CenterCrop)")
      ->check(CLI::IsMember({"adm", "torchvision"}));
  app.add_option("--augment", o->augment,
                 "none (default); adm: random_crop_arr + horizontal flip, the paper's training "
                 "augmentation; torchvision: RandomResizedCrop + flip. Writes --copies views per image")
      ->check(CLI::IsMember({"none", "adm", "torchvision"}));
  app.add_option("--copies", o->copies, "augmented copies per image (rows copy-major; needs --augment)")
      ->check(at_least(1));
  app.add_option("--augment-seed", o->augment_seed, "seed of the augmentation (per seed, copy and sample)")
      ->check(at_least(0));
  app.add_option("--t", o->t, "timesteps, comma-separated (e.g. 90,150)")->required();
  app.add_option("--blocks", o->blocks, "blocks, comma-separated, 1-based paper numbering (0/out = output)")
      ->required();
  app.add_option("--pool", o->pool, "pooling: avg:P, max:P, gap or none");
  auto* seed = app.add_option("--noise-seed", o->seed, "seed of the counter-based noise")->check(at_least(0));
  app.add_flag("--no-noise", o->no_noise, "feed the input unchanged as x_t (with t as the timestep)")
      ->excludes(seed);
  app.add_option("--noise-draws", o->draws, "average the features over K noise draws");
  app.add_option("--label", o->label, "class label for class-conditional models");
  app.add_option("--batch", o->batch, "images per U-Net pass");
  app.add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(at_least(0));
  app.add_option("--device", o->device, "cpu, cuda or cuda:N");
  app.add_option("--precision", o->precision, "fp32 or bf16 (CPU, AVX-512 BF16)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--limit", o->limit, "only the first N samples")->check(at_least(0));
  app.add_option("--chunk", o->chunk, "samples per resumable chunk (default: 16 batches)")
      ->check(at_least(1));
  app.add_option("--dtype", o->dtype, "storage type of the features: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  app.add_option("--out", o->out, "output feature file (.safetensors)")->required();
  return [o]() {
    LoadOptions lo;
    if (!o->preset.empty()) lo.preset = o->preset;
    if (!o->config.empty()) lo.config = UNetConfig::from_json_file(o->config);
    if (o->image_size > 0) lo.image_size = o->image_size;
    if (!fs::exists(o->weights)) throw IoError("--weights", "no such file: " + o->weights);
    if (!fs::exists(o->input)) throw IoError("--input", "no such file or folder: " + o->input);
    const UNet net = UNet::load(o->weights, lo);

    ExtractOptions eo;
    eo.timesteps = parse_int_list(o->t, "--t");
    eo.blocks = parse_int_list(o->blocks, "--blocks", true);
    eo.noise = o->no_noise ? NoiseMode::None : NoiseMode::Seeded;
    eo.noise_seed = o->seed;
    eo.noise_draws = o->draws;
    eo.label = o->label;
    if (o->pool != "none")
      eo.pool = PoolSpec::parse(o->pool);
    else
      PoolSpec::parse(o->pool);
    eo.batch_size = o->batch;
    eo.device = parse_device(o->device);
    eo.threads = o->threads;
    eo.precision = parse_precision(o->precision.c_str());
    const FeatureExtractor fx(net, eo);

    if (o->augment == "none" && o->copies > 1)
      throw ArgumentError("--copies", "copies are augmented views: give --augment adm (or torchvision)");
    if (o->augment != "none" && o->augment != o->preprocess && o->preprocess != "adm")
      throw ArgumentError("--augment",
                          "--augment " + o->augment + " with --preprocess " + o->preprocess +
                              ": the augmentation names its own preprocessing; leave --preprocess out");
    data::Transform transform = data::Transform::eval(data::parse_preprocess(o->preprocess));
    if (o->augment == "adm") transform = data::Transform::adm_train(o->augment_seed);
    if (o->augment == "torchvision") transform = data::Transform::torchvision_train(o->augment_seed);
    const auto spec = data::InputSpec::from_shape(fx.input_spec());
    auto ds = open_dataset(o->input, o->labels, spec, o->limit, transform);
    ds->set_threads(o->threads);
    if (!(ds->spec() == spec))
      throw ShapeError("--input", "the data is " + ds->spec().str() + " but the model takes " + spec.str());
    const std::int64_t samples = o->limit > 0 ? std::min(o->limit, ds->size()) : ds->size();
    if (samples < 1) throw ArgumentError("--input", "the data set is empty");
    const std::int64_t total = samples * o->copies;
    const auto labels = ds->labels();

    FeatureMetadata meta = FeatureMetadata::describe(fx, o->weights, ds.get());
    meta.copies = o->copies;
    FeatureWriterOptions wo;
    wo.total = total;
    wo.chunk_size = o->chunk > 0 ? o->chunk : 16LL * o->batch;
    wo.labels = labels.has_value();
    wo.store = parse_dtype(o->dtype);
    FeatureWriter writer(o->out, meta, wo);
    const auto pending = writer.pending();
    fmt::print(stderr, "extracting t={} blocks={} pool={} from {} samples{} ({}), {} of {} chunks to do\n",
               o->t, o->blocks, o->pool, samples,
               o->copies > 1 ? fmt::format(" x {} augmented copies", o->copies) : std::string(),
               ds->describe(), pending.size(), writer.num_chunks());
    Progress progress("extract", total);
    std::int64_t done = 0;
    for (std::int64_t c = 0; c < writer.num_chunks(); ++c)
      if (writer.done(c)) done += writer.chunk_range(c).second - writer.chunk_range(c).first;
    progress.set_resumed(done);
    for (std::int64_t c : pending) {
      const auto [b, e] = writer.chunk_range(c);
      const Tensor images = rows_of(*ds, samples, b, e);
      const std::int64_t base = done;
      const FeatureSet fs_ =
          fx.extract(images, b, {}, [&](std::int64_t d, std::int64_t) { progress.update(base + d); });
      writer.write(c, fs_, labels_of(labels, samples, b, e));
      done += e - b;
      progress.update(done);
    }
    writer.finish();
    fmt::print(stderr, "wrote {}\n", o->out);
    return 0;
  };
}

}  // namespace diffprobe::cli
