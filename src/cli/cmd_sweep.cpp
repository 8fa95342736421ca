// `diffprobe sweep`: which block, which t, which pooling? A linear probe per cell of the grid,
// every block's features from one forward per (t, batch), resumable (studies/sweep.hpp).
#include <fmt/core.h>

#include <filesystem>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/int8_flags.hpp"
#include "cli/model_flags.hpp"
#include "cli/parse_list.hpp"
#include "cli/progress.hpp"
#include "diffprobe/data/open_dataset.hpp"
#include "diffprobe/studies/sweep.hpp"

namespace diffprobe::cli {
namespace fs = std::filesystem;

namespace {

// "all", "1-19", "8,9,24", "1-4,9" (1-based paper numbering; 0/out = the output).
std::vector<int> parse_blocks(const std::string& text, int num_blocks) {
  std::vector<int> out;
  if (text == "all") {
    for (int b = 1; b <= num_blocks; ++b) out.push_back(b);
    return out;
  }
  for (const auto& part : split(text)) {
    const auto dash = part.find('-');
    if (dash == std::string::npos || dash == 0) {
      out.push_back(parse_block(part));
      continue;
    }
    const int lo = parse_block(part.substr(0, dash)), hi = parse_block(part.substr(dash + 1));
    if (lo < 1 || hi < lo)
      throw ArgumentError("--blocks", "'" + part + "' is not a range of blocks A-B with 1 <= A <= B");
    for (int b = lo; b <= hi; ++b) out.push_back(b);
  }
  return out;
}

}  // namespace

Runner add_sweep(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    Int8Flags int8;
    std::string train, train_labels, test, test_labels, t = "10,50,100,200", blocks = "all", pool = "avg:2",
                                                        head = "linear", probe = "ridge", device = "cpu",
                                                        precision = "fp32", preprocess = "adm", out;
    std::int64_t limit_train = 0, limit_test = 0;
    std::uint64_t seed = 0;
    std::optional<std::uint64_t> test_seed;
    int batch = 64, threads = 0, refine = 5;
  };
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  app.add_option("--train", o->train, "training data: image folder, .npy or IDX images")->required();
  app.add_option("--train-labels", o->train_labels, "labels of --train (IDX or .npy)");
  app.add_option("--test", o->test, "test data: image folder, .npy or IDX images")->required();
  app.add_option("--test-labels", o->test_labels, "labels of --test (IDX or .npy)");
  app.add_option("--t", o->t, "timesteps, comma-separated (default 10,50,100,200)");
  app.add_option("--blocks", o->blocks,
                 "all (default), a range 1-19, or a list 8,9,24 (ranges allowed: 1-4,9)");
  app.add_option("--pool", o->pool, "poolings, comma-separated: avg:P, max:P, gap or none (default avg:2)");
  app.add_option("--limit-train", o->limit_train, "only the first N training samples")->check(at_least(0));
  app.add_option("--limit-test", o->limit_test, "only the first N test samples")->check(at_least(0));
  app.add_option("--head", o->head, "the probe's head (linear)")->check(CLI::IsMember({"linear"}));
  app.add_option("--probe", o->probe,
                 "ridge (default: closed-form ridge on standardised features, alpha chosen on a 10 % "
                 "hold-out) or trained (AdamW, 30 epochs: the study's linear probe)")
      ->check(CLI::IsMember({"ridge", "trained"}));
  app.add_option(
         "--refine", o->refine,
         "score the best K cells again with the trained probe, which picks the best (default 5; 0: off)")
      ->check(at_least(0));
  app.add_option("--noise-seed", o->seed, "seed of the training split's noise")->check(at_least(0));
  app.add_option("--test-noise-seed", o->test_seed,
                 "seed of the test split's noise (default: noise seed + 1)")
      ->check(at_least(0));
  app.add_option("--preprocess", o->preprocess, "image geometry: adm (default) or torchvision")
      ->check(CLI::IsMember({"adm", "torchvision"}));
  app.add_option("--batch", o->batch, "images per U-Net pass (default 64)")->check(at_least(1));
  app.add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(at_least(0));
  app.add_option("--device", o->device, "cpu, cuda or cuda:N");
  app.add_option("--precision", o->precision,
                 "fp32, bf16 (CPU: AVX-512 BF16) or int8 (CPU: AVX-512 VNNI, BF16)")
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  o->int8.add_to(app);
  app.add_option("--out", o->out, "output folder (features, cells, sweep.csv/json, heatmaps)")->required();
  return [o]() {
    const LoadOptions lo = o->model.checked_load_options();
    for (const auto* p : {&o->train, &o->test})
      if (!fs::exists(*p))
        throw IoError(p == &o->train ? "--train" : "--test", "no such file or folder: " + *p);
    UNet net = UNet::load(o->model.weights, lo);
    o->int8.apply(net, o->model.weights, parse_precision(o->precision.c_str()));

    SweepOptions so;
    so.timesteps = parse_int_list(o->t, "--t");
    so.blocks = parse_blocks(o->blocks, net.num_blocks());
    so.pools.clear();
    for (const auto& p : split(o->pool)) so.pools.push_back(PoolSpec::parse(p));
    so.limit_train = o->limit_train;
    so.limit_test = o->limit_test;
    so.noise_seed = o->seed;
    so.test_noise_seed = o->test_seed;
    so.batch_size = o->batch;
    so.device = parse_device(o->device);
    so.precision = parse_precision(o->precision.c_str());
    so.threads = o->threads;
    so.probe = parse_sweep_probe(o->probe);
    so.refine = o->refine;
    so.weights = o->model.weights;

    const auto spec = data::InputSpec::from_shape(net.input_shape(1));
    const auto transform = data::Transform::eval(data::parse_preprocess(o->preprocess));
    auto labels_of = [](const std::string& l) {
      return l.empty() ? std::optional<fs::path>() : std::optional<fs::path>(l);
    };
    auto train = data::open_dataset(o->train, labels_of(o->train_labels), spec, o->limit_train, transform);
    auto test = data::open_dataset(o->test, labels_of(o->test_labels), spec, o->limit_test, transform);
    train->set_threads(o->threads);
    test->set_threads(o->threads);
    fmt::print(
        stderr,
        "sweep: {} t x {} blocks x {} pooling(s) = {} cells, {} probe{}; train {} ({} samples), test {} ({} "
        "samples)\n",
        so.timesteps.size(), so.blocks.size(), so.pools.size(),
        so.timesteps.size() * so.blocks.size() * so.pools.size(), o->probe,
        o->refine > 0 ? fmt::format(", best {} refined by the trained probe", o->refine) : std::string(),
        o->train, o->limit_train > 0 ? std::min(o->limit_train, train->size()) : train->size(), o->test,
        o->limit_test > 0 ? std::min(o->limit_test, test->size()) : test->size());

    std::optional<Progress> bar;
    std::string phase;
    std::int64_t last = -1;
    so.on_progress = [&](const SweepProgress& p) {
      if (p.phase == phase && p.done == last) return;  // a job's final report repeats its last count
      last = p.done;
      if (p.phase != phase) {
        phase = p.phase;
        bar.emplace(p.phase, p.total, p.phase == "extract" ? "img" : "cells");
        bar->set_resumed(p.resumed);
        if (p.resumed > 0)
          fmt::print(stderr, "resuming: {} of {} {} were done by an earlier run\n", p.resumed, p.total,
                     p.phase == "extract" ? "images" : "cells");
      }
      bar->update(p.done);
    };
    const SweepResult r = run_sweep(net, *train, *test, o->out, so);
    const SweepCell& b = r.best;
    fmt::print("best: t={} block={} pool={}  top-1 {:.2f}%  top-5 {:.2f}%{}\n", b.t, b.block, b.pool,
               100 * b.top1, 100 * b.top5,
               b.refined_top1 ? fmt::format("  (trained probe: top-1 {:.2f}%, top-5 {:.2f}%)",
                                            100 * *b.refined_top1, 100 * *b.refined_top5)
                              : std::string());
    fmt::print(stderr, "{:.1f} s: features {:.1f} s, probes {:.1f} s; wrote {}, {} and {} heatmap(s) in {}\n",
               r.seconds, r.extract_seconds, r.probe_seconds, r.csv.filename().string(),
               r.json.filename().string(), r.heatmaps.size(), o->out);
    return 0;
  };
}

}  // namespace diffprobe::cli
