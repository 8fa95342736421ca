// `diffprobe extract`: dataset -> U-Net block features -> a feature file (resumable), in one
// process or as shards (--shard, mpirun, srun) whose parts are merged into the same bytes.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "cli/commands.hpp"
#include "cli/int8_flags.hpp"
#include "cli/model_flags.hpp"
#include "cli/mpi_session.hpp"
#include "cli/parse_list.hpp"
#include "cli/progress.hpp"
#include "diffprobe/data/open_dataset.hpp"
#include "diffprobe/features/extraction_job.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/features/feature_file.hpp"

namespace diffprobe::cli {
namespace fs = std::filesystem;

namespace {

// This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over an
// exec from the parent's forked copy (a Python script's gigabytes), VmHWM starts afresh.
double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

// Under MPI, before any work: every rank must see the file rank 0 writes next to OUT, else the
// parts could never be merged (the folder is not shared). Collective: every rank calls it.
bool output_folder_is_shared(const MpiSession& mpi, const std::string& out) {
  const fs::path dir = parts_dir(out), probe = dir / ".shared-folder-check";
  bool wrote = true;
  if (mpi.rank() == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::ofstream(probe) << "written by rank 0\n";
    wrote = fs::exists(probe, ec);
    if (!wrote) fmt::print(stderr, "diffprobe: rank 0 cannot write {}\n", probe.string());
  }
  if (!mpi.all(wrote)) return false;
  // Another machine may see a new file only after its attribute cache expires: wait up to 10 s.
  bool seen = false;
  for (int i = 0; i < 100 && !seen; ++i) {
    std::error_code ec;
    seen = fs::exists(probe, ec);
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!seen)
    fmt::print(
        stderr,
        "diffprobe: rank {}: the output folder is not shared with rank 0 (this rank cannot see {}); put "
        "{} on a file system every rank sees (docs/distributed.md), or run the shards with --shard I/N "
        "and merge their parts in one place with `diffprobe merge`\n",
        mpi.rank(), probe.string(), out);
  const bool all = mpi.all(seen);
  if (mpi.rank() == 0) {
    std::error_code ec;
    fs::remove(probe, ec);
    fs::remove(dir, ec);  // only when empty: nothing of a run was there
  }
  return all;
}

}  // namespace

Runner add_extract(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    Int8Flags int8;
    std::string input, labels, t = "90", blocks = "24", pool = "avg:2", device = "cpu", out,
                               precision = "fp32", dtype = "fp32", preprocess = "adm", augment = "none",
                               shard = "auto", on_bad_image = "stop";
    std::uint64_t seed = 0, augment_seed = 0;
    int copies = 1;
    bool no_noise = false, keep_parts = false, no_merge = false, check_finite = false;
    int draws = 1, batch = 16, threads = 0;
    std::optional<int> label;
    std::int64_t limit = 0, chunk = 0;
  };
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
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
  app.add_option("--device", o->device, "cpu, cuda, cuda:N or cuda:local (the node-local rank's GPU)");
  app.add_option(
         "--precision", o->precision,
         "fp32, bf16 (CPU: AVX-512 BF16) or int8 (CPU: AVX-512 VNNI and BF16; docs/model_numerics.md)")
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  o->int8.add_to(app);
  app.add_option("--limit", o->limit, "only the first N samples")->check(at_least(0));
  app.add_option("--chunk", o->chunk,
                 "samples per resumable chunk (default: 16 batches, and at least 128 GFLOP of forward work)")
      ->check(at_least(1));
  app.add_option("--dtype", o->dtype, "storage type of the features: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  app.add_option("--out", o->out, "output feature file (.safetensors)")->required();
  app.add_option("--shard", o->shard,
                 "I/N: compute shard I of N into OUT.parts/ (job arrays); auto (default): the MPI "
                 "launcher's rank and size (mpirun, srun), else the whole output");
  app.add_flag("--check-finite", o->check_finite,
               "stop with an error naming the image, t and block when a feature is NaN or infinite");
  app.add_option("--on-bad-image", o->on_bad_image,
                 "an image that cannot be read (corrupt, truncated, empty): stop (default) with an error "
                 "naming it, or skip it (its row's features are NaN and the file's metadata lists it)")
      ->check(CLI::IsMember({"stop", "skip"}));
  app.add_flag("--keep-parts", o->keep_parts, "keep OUT.parts/ after assembling OUT");
  app.add_flag("--no-merge", o->no_merge, "leave the finished parts for `diffprobe merge`");
  return [o]() {
    const LoadOptions lo = o->model.checked_load_options();
    if (!fs::exists(o->input)) throw IoError("--input", "no such file or folder: " + o->input);
    UNet net = UNet::load(o->model.weights, lo);
    o->int8.apply(net, o->model.weights, parse_precision(o->precision.c_str()));
    MpiSession mpi;
    const LaunchInfo launch = detect_launch();
    Shard shard;
    if (o->shard != "auto")
      shard = Shard::parse(o->shard);
    else if (mpi.active())
      shard = {mpi.rank(), mpi.size()};
    else
      shard = launch.shard;

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
    eo.exec.device = o->device == "cuda:local"
                         ? Device::cuda(launch.local_rank % std::max(1, cuda_device_count()))
                         : parse_device(o->device);
    eo.exec.threads = o->threads;
    eo.exec.precision = parse_precision(o->precision.c_str());
    eo.check_finite = o->check_finite;
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
    std::optional<fs::path> labels;
    if (!o->labels.empty()) labels = o->labels;
    if (fs::is_directory(o->input) && labels)
      throw ArgumentError("--labels", "an image folder takes its labels from its sub-folders");
    if (fs::path(o->input).extension() == ".npy" && transform.random())
      throw ArgumentError("--augment",
                          "a .npy input holds model inputs as they are; augmentation needs images "
                          "(an image folder or an IDX file)");
    auto ds = data::open_dataset(o->input, labels, spec, o->limit, transform);
    ds->set_threads(o->threads);

    ExtractionJobOptions jo;
    jo.chunk_size = o->chunk;
    jo.copies = o->copies;
    jo.limit = o->limit;
    jo.store = parse_dtype(o->dtype);
    jo.shard = shard;
    jo.merge = !o->no_merge && !mpi.active();  // under MPI rank 0 merges once every rank is done
    jo.keep_parts = o->keep_parts;
    jo.weights = o->model.weights;
    jo.skip_bad_images = o->on_bad_image == "skip";
    const std::int64_t samples = o->limit > 0 ? std::min(o->limit, ds->size()) : ds->size();
    const std::string who = shard.count > 1 ? fmt::format("shard {} ", shard.str()) : std::string();
    fmt::print(stderr, "{}extracting t={} blocks={} pool={} from {} samples{} ({})\n", who, o->t, o->blocks,
               o->pool, samples,
               o->copies > 1 ? fmt::format(" x {} augmented copies", o->copies) : std::string(),
               ds->describe());
    std::optional<Progress> progress;
    jo.on_progress = [&](const ExtractionProgress& p) {
      if (!progress) {
        progress.emplace(shard.count > 1 ? "extract " + shard.str() : "extract", p.rows_total);
        progress->set_resumed(p.rows_resumed);
        if (p.rows_resumed > 0)
          fmt::print(stderr, "resuming: {} of {} rows were finished by an earlier run\n", p.rows_resumed,
                     p.rows_total);
      }
      progress->update(p.rows_done);
    };

    if (mpi.active() && shard.count > 1 && !output_folder_is_shared(mpi, o->out)) return 2;

    ExtractionResult result;
    bool ok = true;
    std::string error;
    try {
      result = run_extraction(fx, *ds, o->out, jo);
    } catch (const Error& e) {
      if (!mpi.active()) throw;
      ok = false;
      error = e.what();
    }
    if (ok && !result.skipped.empty()) {
      fmt::print(
          stderr,
          "skipped {} unreadable image{} (features NaN, listed in the file's metadata 'skipped_rows'):\n",
          result.skipped.size(), result.skipped.size() == 1 ? "" : "s");
      for (std::size_t i = 0; i < result.skipped.size() && i < 20; ++i)
        fmt::print(stderr, "  row {}: {}\n", result.skipped[i].row, result.skipped[i].error);
      if (result.skipped.size() > 20) fmt::print(stderr, "  ... and {} more\n", result.skipped.size() - 20);
    }
    if (ok && result.rows_computed > 0) {
      fmt::print(
          stderr,
          "{}{} rows in {:.2f} s ({:.2f} rows/s); the forward pass was busy {:.1f} % of it (waited {:.2f} s "
          "for decoded images); peak RSS {:.0f} MB\n",
          who, result.rows_computed, result.seconds, result.rows_computed / result.seconds,
          100.0 * result.forward_seconds / result.seconds, result.wait_seconds, peak_rss_mb());
    }
    if (mpi.active()) {
      // Every rank reaches this point (an error included), so nobody waits forever.
      if (!ok) fmt::print(stderr, "diffprobe: rank {}: {}\n", mpi.rank(), error);
      if (!mpi.all(ok)) return 2;
      bool merged = true;
      std::string merge_error;
      if (mpi.rank() == 0 && !o->no_merge && !result.complete) {
        try {
          merge_parts(o->out, o->keep_parts);
        } catch (const Error& e) {
          merged = false;
          merge_error = e.what();
          fmt::print(stderr, "diffprobe: {}\n", merge_error);
        }
      }
      if (!mpi.broadcast(merged)) return 2;
      if (mpi.rank() == 0)
        fmt::print(stderr, "{} {}\n", o->no_merge ? "left the parts in" : "wrote",
                   o->no_merge ? parts_dir(o->out).string() : o->out);
      return 0;
    }
    if (result.complete)
      fmt::print(stderr, "{} {}\n",
                 result.rows_computed == 0 && !result.merged ? "already complete:" : "wrote", o->out);
    else
      fmt::print(stderr, "wrote {}; {} once every shard has finished (or `diffprobe merge --out {}`)\n",
                 result.output.string(),
                 o->no_merge ? "merge" : "the last shard to finish assembles " + o->out, o->out);
    return 0;
  };
}

}  // namespace diffprobe::cli
