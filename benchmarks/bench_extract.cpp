// What the extraction path adds to the U-Net forward, per image, measured in one run: each timed
// iteration runs, one after the other on the same images,
//   forward    UNet::forward of the noised batch, as bench_unet does (its own memory plan),
//   extractor  FeatureExtractor::extract (noise, the forward, pooling, copying the features out),
//   job        run_extraction (the library call behind `diffprobe extract`: decoding on its own
//              thread, the extractor, the feature file written, checksummed and renamed),
// each over --batches batches of --batch images (the job writes chunks of the CLI's default size,
// 16 batches and at least 128 GFLOP of forward work, and its fixed cost per call, the final file's assembly
// and checksum, is spread over the --batches batches as in a run of that many images), and reports each one's
// median ms per image and the ratios extractor/forward and job/forward (medians of the per-iteration ratios,
// so a slow minute of a shared VM moves numerator and denominator together).
//   bench_extract [--preset=fmnist_default] [--weights=FILE] [--block=9] [--t=10] [--batch=1,8]
//                 [--batches=4] [--threads=2] [--precision=fp32] [--pool=avg:2] [--data=PATH]
//                 [--dir=/tmp]
// Defaults: the bundled model's preset with random weights and in-memory random images in
// [-1, 1] (nothing decoded: the job's decoding thread only copies); --data reads images as the
// CLI does (an image folder, IDX or .npy file; open_dataset), decoded on the job's thread.
// --dir is where the job's feature file goes (removed after every iteration).
// --cost instead measures how the extractor's cost grows with the work asked of it (issue 21,
// item 6): ms per image of FeatureExtractor::extract for k timesteps x m blocks x d noise draws,
// (k, m, d) in (1,1,1) (2,1,1) (4,1,1) (1,m,1) (4,m,1) (1,1,2) (1,1,4), with m the blocks of
// --cost-blocks (default 3,6,9: the deepest is the one forward all of them share). k timesteps run
// as one batch of k x batch images and m blocks come from one pass, so the cost should be ~k
// forwards to the deepest block, not k x m; d draws are d passes. Counter vs_one: the ratio to
// the (1,1,1) configuration measured in the same iteration.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "cli/parse_list.hpp"  // the CLI's comma-separated lists
#include "diffprobe/data/open_dataset.hpp"
#include "diffprobe/diffprobe.hpp"
#include "diffprobe/diffusion/counter_noise.hpp"
#include "diffprobe/features/extraction_job.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string preset = "fmnist_default", weights, data, pool = "avg:2", dir = "/tmp";
  int block = 9, t = 10, batches = 4;
  std::vector<int> batch{1, 8}, threads{2};
  Precision precision = Precision::FP32;
  bool cost = false;
  std::vector<int> cost_blocks{3, 6, 9};
};

Options g_opt;
std::unique_ptr<UNet> g_net;

// Random images in [-1, 1], made on demand (the decoding thread's work is then a copy).
class RandomImages final : public data::Dataset {
 public:
  RandomImages(std::int64_t n, data::InputSpec spec) : n_(n), spec_(spec) {}
  std::int64_t size() const override { return n_; }
  data::InputSpec spec() const override { return spec_; }
  std::optional<Tensor> labels() const override { return std::nullopt; }
  int num_classes() const override { return 0; }
  std::vector<std::string> class_names() const override { return {}; }
  std::string describe() const override { return "random images in [-1, 1]"; }

 protected:
  void load(std::int64_t index, float* out) const override {
    std::mt19937 rng(static_cast<std::uint32_t>(index));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const std::int64_t per = std::int64_t{spec_.channels} * spec_.size * spec_.size;
    for (std::int64_t k = 0; k < per; ++k) out[k] = u(rng);
  }
  bool parallel_load() const override { return false; }

 private:
  std::int64_t n_;
  data::InputSpec spec_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

void run(benchmark::State& state, std::int64_t batch, int threads) {
  using clock = std::chrono::steady_clock;
  const UNet& net = *g_net;
  const std::int64_t images = batch * g_opt.batches;
  const data::InputSpec spec = data::InputSpec::from_shape(net.input_shape(1));
  std::unique_ptr<data::Dataset> ds;
  try {
    ds = g_opt.data.empty() ? std::make_unique<RandomImages>(images, spec)
                            : data::open_dataset(g_opt.data, std::nullopt, spec, images);
    if (ds->size() < images)
      throw ArgumentError("bench_extract", "--data holds fewer than batch x batches images");
  } catch (const Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  ds->set_threads(threads);
  ExtractOptions eo;
  eo.timesteps = {g_opt.t};
  eo.blocks = {g_opt.block};
  eo.batch_size = static_cast<int>(batch);
  if (g_opt.pool != "none") eo.pool = PoolSpec::parse(g_opt.pool);
  eo.exec.threads = threads;
  eo.exec.precision = g_opt.precision;
  const FeatureExtractor fx(net, eo);
  const Tensor x0 = ds->images(0, images);
  const int blocks[1] = {g_opt.block};

  // The forward alone, on the same noised inputs the extractor makes (NoiseMode::Seeded).
  PlannedAllocator planned;
  ExecContext ctx = eo.exec;
  ctx.allocator = &planned;
  const NoiseSchedule& sched = fx.schedule();
  std::vector<Tensor> xt;
  const std::int64_t per = x0.numel() / images;
  for (std::int64_t s = 0; s < images; s += batch) {
    Tensor x = Tensor::empty(net.input_shape(batch));
    std::vector<float> eps(static_cast<std::size_t>(per));
    for (std::int64_t i = 0; i < batch; ++i) {
      gaussian_noise(
          {eo.noise_seed, static_cast<std::uint64_t>(s + i), static_cast<std::uint32_t>(g_opt.t), 0},
          eps.data(), per);
      sched.q_sample(g_opt.t, x0.data<float>() + (s + i) * per, eps.data(), x.data<float>() + i * per, per);
    }
    xt.push_back(x);
  }
  const Tensor tv = Tensor::from_vector(
      Shape{batch}, std::vector<float>(static_cast<std::size_t>(batch), sched.model_timestep(g_opt.t)));
  const fs::path out = fs::path(g_opt.dir) / ("bench_extract_" + std::to_string(::getpid()) + ".safetensors");
  auto forward = [&] {
    for (const Tensor& x : xt) {
      const auto f = net.forward(x, tv, {}, blocks, ctx);
      benchmark::DoNotOptimize(f.begin()->second.raw());
    }
  };
  auto job = [&] {
    ExtractionJobOptions jo;  // the default chunks, as the CLI's
    const ExtractionResult r = run_extraction(fx, *ds, out, jo);
    fs::remove(out);
    return r;
  };
  std::vector<double> tf, te, tj, re, rj, busy;
  try {
    net.prepare(ctx, blocks);
    forward();  // the first passes: primitives created, memory plans recorded
    (void)fx.extract(x0);
    job();
    for (auto _ : state) {
      const auto t0 = clock::now();
      forward();
      const auto t1 = clock::now();
      const FeatureSet f = fx.extract(x0);
      const auto t2 = clock::now();
      const ExtractionResult r = job();
      const auto t3 = clock::now();
      benchmark::DoNotOptimize(f.items().begin()->second.raw());
      const double a = std::chrono::duration<double>(t1 - t0).count(),
                   b = std::chrono::duration<double>(t2 - t1).count(),
                   c = std::chrono::duration<double>(t3 - t2).count();
      tf.push_back(a);
      te.push_back(b);
      tj.push_back(c);
      re.push_back(b / a);
      rj.push_back(c / a);
      busy.push_back(r.forward_seconds / r.seconds);
      state.SetIterationTime(a + b + c);
    }
  } catch (const Error& e) {
    std::error_code ec;
    fs::remove_all(out, ec);
    state.SkipWithError(e.what());
    return;
  }
  const double ms = 1e3 / static_cast<double>(images);
  state.counters["forward_ms/img"] = median(tf) * ms;
  state.counters["extractor_ms/img"] = median(te) * ms;
  state.counters["job_ms/img"] = median(tj) * ms;
  state.counters["extractor/forward"] = median(re);
  state.counters["job/forward"] = median(rj);
  state.counters["job_busy"] = median(busy);  // share of the job's time the extractor ran
}

struct Work {
  int k = 1, m = 1, d = 1;
};

// --cost: the (1,1,1) extractor and the (k,m,d) one alternate in every iteration.
void run_cost(benchmark::State& state, std::int64_t batch, int threads, Work w) {
  using clock = std::chrono::steady_clock;
  const UNet& net = *g_net;
  const data::InputSpec spec = data::InputSpec::from_shape(net.input_shape(1));
  const std::int64_t images = batch;
  RandomImages ds(images, spec);
  const Tensor x0 = ds.images(0, images);
  auto options = [&](Work v) {
    ExtractOptions eo;
    static constexpr int kTimesteps[4] = {10, 50, 90, 150};
    eo.timesteps.assign(kTimesteps, kTimesteps + v.k);
    eo.blocks = v.m == 1 ? std::vector<int>{g_opt.cost_blocks.back()} : g_opt.cost_blocks;
    eo.noise_draws = v.d;
    eo.batch_size = static_cast<int>(batch);
    if (g_opt.pool != "none") eo.pool = PoolSpec::parse(g_opt.pool);
    eo.exec.threads = threads;
    eo.exec.precision = g_opt.precision;
    return eo;
  };
  std::vector<double> tw, t1, ratio;
  try {
    const FeatureExtractor one(net, options({})), fx(net, options(w));
    (void)one.extract(x0);
    (void)fx.extract(x0);
    for (auto _ : state) {
      const auto a = clock::now();
      (void)one.extract(x0);
      const auto b = clock::now();
      (void)fx.extract(x0);
      const auto c = clock::now();
      const double s1 = std::chrono::duration<double>(b - a).count(),
                   sw = std::chrono::duration<double>(c - b).count();
      t1.push_back(s1);
      tw.push_back(sw);
      ratio.push_back(sw / s1);
      state.SetIterationTime(sw);
    }
  } catch (const Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  const double ms = 1e3 / static_cast<double>(images);
  state.counters["ms/img"] = median(tw) * ms;
  state.counters["one_ms/img"] = median(t1) * ms;
  state.counters["vs_one"] = median(ratio);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view a = argv[i];
      auto value = [&](std::string_view key) { return std::string(a.substr(key.size())); };
      if (a.starts_with("--preset="))
        g_opt.preset = value("--preset=");
      else if (a.starts_with("--weights="))
        g_opt.weights = value("--weights=");
      else if (a.starts_with("--data="))
        g_opt.data = value("--data=");
      else if (a.starts_with("--pool="))
        g_opt.pool = value("--pool=");
      else if (a.starts_with("--dir="))
        g_opt.dir = value("--dir=");
      else if (a.starts_with("--block="))
        g_opt.block = cli::parse_int_list(value("--block="), "--block", /*blocks=*/true).at(0);
      else if (a.starts_with("--t="))
        g_opt.t = cli::parse_int_list(value("--t="), "--t").at(0);
      else if (a.starts_with("--batches="))
        g_opt.batches = std::max(1, cli::parse_int_list(value("--batches="), "--batches").at(0));
      else if (a.starts_with("--batch="))
        g_opt.batch = cli::parse_int_list(value("--batch="), "--batch");
      else if (a.starts_with("--threads="))
        g_opt.threads = cli::parse_int_list(value("--threads="), "--threads");
      else if (a == "--cost")
        g_opt.cost = true;
      else if (a.starts_with("--cost-blocks="))
        g_opt.cost_blocks = cli::parse_int_list(value("--cost-blocks="), "--cost-blocks", /*blocks=*/true);
      else if (a.starts_with("--precision="))
        g_opt.precision = parse_precision(value("--precision=").c_str());
      else
        rest.push_back(argv[i]);
    }
    if (g_opt.weights.empty()) {
      g_net = std::make_unique<UNet>(UNet::random(UNetConfig::preset(g_opt.preset), 0));
    } else {
      LoadOptions lo;
      if (g_opt.preset != "fmnist_default") lo.preset = g_opt.preset;
      g_net = std::make_unique<UNet>(UNet::load(g_opt.weights, lo));
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_extract: %s\n", e.what());
    return 2;
  }
  std::sort(g_opt.cost_blocks.begin(), g_opt.cost_blocks.end());
  if (g_opt.cost) {
    const int m = static_cast<int>(g_opt.cost_blocks.size());
    for (int th : g_opt.threads)
      for (int n : g_opt.batch)
        for (Work w : {Work{1, 1, 1}, Work{2, 1, 1}, Work{4, 1, 1}, Work{1, m, 1}, Work{4, m, 1},
                       Work{1, 1, 2}, Work{1, 1, 4}}) {
          const std::string name = "cost/" + g_opt.preset + "/timesteps:" + std::to_string(w.k) +
                                   "/blocks:" + std::to_string(w.m) + "/draws:" + std::to_string(w.d) +
                                   "/batch:" + std::to_string(n) + "/threads:" + std::to_string(th) + "/" +
                                   precision_name(g_opt.precision);
          benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { run_cost(s, n, th, w); })
              ->Unit(benchmark::kMillisecond)
              ->UseManualTime();
        }
  }
  for (int th : g_opt.threads)
    for (int n : g_opt.batch) {
      if (g_opt.cost) break;
      const std::string name = "extract/" + g_opt.preset + "/block:" + std::to_string(g_opt.block) +
                               "/batch:" + std::to_string(n) + "/threads:" + std::to_string(th) + "/" +
                               precision_name(g_opt.precision);
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { run(s, n, th); })
          ->Unit(benchmark::kMillisecond)
          ->UseManualTime();
    }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
