// U-Net forward to a block on the CPU: seconds per batch, images/s and GFLOP/s (the model's own
// 2*MAC count up to that block, from unet_block_infos), warm (weights packed, primitives created,
// the memory plan made by a first pass).
//   bench_unet [--preset=NAME] [--weights=FILE] [--input=X.npy] [--t=90] [--blocks=24,0]
//              [--batch=1,8] [--threads=2] [--precision=fp32,bf16] [--per-block] [--dump=OUT.npy]
//              [--allocator=planned|caching|heap] [--int8=per-image,calibrated]
//              [--int8-calibration=FILE]
// Defaults: the bundled model's preset (fmnist_default), random weights generated in memory
// (UNet::random; no file needed), random input, blocks "deepest to all": 0 (= the full forward).
// --weights/--input use exactly the weights and input a baseline uses (benchmarks/compare_torch.py).
// --allocator=caching uses the size-bucketed CachingAllocator instead of the memory plan
// (FeatureExtractor's), --allocator=heap passes no allocator (ExecContext's default: plain heap
// memory), to compare them.
// --precision=int8 runs the convolutions in int8: --int8=per-image (default) with each image's own
// input scales, calibrated with scales from one bf16 forward of the benchmark's own input (or, with
// --int8-calibration=FILE, from that file); its limit is the int8 dot-product loop's.
// Counters peak_before / peak_after / peak_GFLOP/s and of_peak: the limit of the precision that
// runs (GFLOP/s; fma_peak.hpp: the fp32 FMA loop for fp32, the bf16 dot-product loop for bf16
// where the CPU has AVX512_BF16) measured just before and just after the timed passes, their
// mean, and the achieved GFLOP/s as a fraction of that mean; peak_kind says which (0 fp32,
// 1 bf16).
// Counters prepare_ms and first_pass_ms: UNet::prepare (packing the weights of the blocks that
// run) and the first forward (primitives created, memory plan recorded), once per repetition.
// --per-block adds counters b<k>_ms: each block's own time within the forward (block callback).
// --dump writes the requested block's output of the first configuration as .npy [N, C, H, W]
// (for checking that the baseline computed the same thing).
// Google Benchmark's own flags (--benchmark_filter, --benchmark_format=json, --benchmark_repetitions)
// work as usual.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "cli/parse_list.hpp"  // the CLI's comma-separated lists
#include "diffprobe/diffprobe.hpp"
#include "fma_peak.hpp"

using namespace diffprobe;

namespace {

struct Options {
  std::string preset = "fmnist_default", weights, input, dump;
  std::vector<int> blocks{0}, batches{1}, threads{2};
  std::vector<Precision> precisions{Precision::FP32};
  float t = 90;
  bool per_block = false;
  std::string allocator = "planned";  // --allocator=
  std::vector<std::string> int8_modes{"per-image"};
  std::string int8_calibration;
};

std::unique_ptr<UNet> g_net;
Tensor g_input;  // the --input images, if any (batch taken from its first rows, repeated as needed)
Options g_opt;
constexpr int kPeakCalls = 15;  // FMA-limit samples before and after the timed passes (~0.1 s each)

Tensor make_input(const UNet& net, std::int64_t batch) {
  const Shape s = net.input_shape(batch);
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  if (g_input.defined()) {
    const Tensor src = g_input.to_layout(Layout::Contiguous);
    const std::int64_t per = s.numel() / batch;
    for (std::int64_t i = 0; i < batch; ++i)
      std::copy_n(src.data<float>() + (i % src.dim(0)) * per, per, v.data() + i * per);
  } else {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& x : v) x = nd(rng);
  }
  return Tensor::from_vector(s, v);
}

double gflop_to(const UNet& net, int block) {
  double total = 0;
  const auto infos = net.block_infos();
  for (const auto& i : infos)
    if (block == 0 || (i.block != 0 && i.block <= block)) total += i.gflop;
  return total;
}

void run_forward(benchmark::State& state, int block, std::int64_t batch, int threads, Precision precision,
                 const std::string& int8_mode) {
  UNet& net = *g_net;
  const Tensor x = make_input(net, batch);
  const Tensor t =
      Tensor::from_vector(Shape{batch}, std::vector<float>(static_cast<std::size_t>(batch), g_opt.t));
  Tensor labels;
  if (net.config().class_cond) {
    labels = Tensor::empty(Shape{batch}, DType::I64);
    for (std::int64_t i = 0; i < batch; ++i) labels.data<std::int64_t>()[i] = i % net.config().num_classes;
  }
  PlannedAllocator planned;  // the memory plan FeatureExtractor uses
  CachingAllocator caching;
  ExecContext ctx;
  ctx.threads = threads;
  ctx.precision = precision;
  ctx.allocator = g_opt.allocator == "caching" ? static_cast<Allocator*>(&caching)
                  : g_opt.allocator == "heap"  ? nullptr
                                               : &planned;
  const int blocks[1] = {block};
  using clock = std::chrono::steady_clock;
  double prepare_ms = 0, first_pass_ms = 0;
  struct Uncalibrate {  // the next configuration starts from per-image scales again
    UNet& net;
    ~Uncalibrate() { net.clear_int8_calibration(); }
  } uncalibrate{net};
  try {
    if (precision == Precision::INT8 && int8_mode == "calibrated") {
      if (!g_opt.int8_calibration.empty()) {
        net.set_int8_calibration(Int8Calibration::load(g_opt.int8_calibration));
      } else {
        ExecContext cal_ctx;
        cal_ctx.threads = threads;
        cal_ctx.precision = Precision::BF16;
        const Int8CalibrationRecorder recorder(net);
        (void)net.forward(x, t, labels, blocks, cal_ctx);
        net.set_int8_calibration(recorder.result());
      }
    }
    const auto t0 = clock::now();
    net.prepare(ctx, blocks);  // only the blocks this forward runs
    const auto t1 = clock::now();
    // The first call: creates the primitives and records the memory plan, its activations in
    // fresh memory (what a one-off call costs; also the setup every repetition pays).
    const auto warm = net.forward(x, t, labels, blocks, ctx);
    const auto t2 = clock::now();
    prepare_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    first_pass_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
    if (!g_opt.dump.empty()) {
      io::save_npy(g_opt.dump, warm.at(block).to_layout(Layout::Contiguous));
      g_opt.dump.clear();
    }
  } catch (const Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  std::map<int, double> block_seconds;
  const auto minor_faults = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_minflt);
  };
  // The FMA limit measured right before and right after the timed passes (fma_peak.hpp): on a
  // shared VM the limit itself drifts (380-440 GFLOP/s within an hour on 2 threads), so a
  // fraction of peak is best taken against the limit of the same minutes.
  const bench::PeakKind peak_kind =
      precision == Precision::BF16 && bench::peak_supported(bench::PeakKind::BF16)   ? bench::PeakKind::BF16
      : precision == Precision::INT8 && bench::peak_supported(bench::PeakKind::INT8) ? bench::PeakKind::INT8
                                                                                     : bench::PeakKind::FP32;
  const double peak_before = bench::peak_gflops(peak_kind, threads, kPeakCalls);
  const double faults_before = minor_faults();
  const auto loop_start = clock::now();
  for (auto _ : state) {
    if (g_opt.per_block) {
      auto last = clock::now();
      const auto out = net.forward(x, t, labels, blocks, ctx, [&](int b, const Tensor&) {
        const auto now = clock::now();
        block_seconds[b] += std::chrono::duration<double>(now - last).count();
        last = now;
      });
      benchmark::DoNotOptimize(out.begin()->second.raw());
    } else {
      const auto out = net.forward(x, t, labels, blocks, ctx);
      benchmark::DoNotOptimize(out.begin()->second.raw());
    }
  }
  const double loop_seconds = std::chrono::duration<double>(clock::now() - loop_start).count();
  const double faults = minor_faults() - faults_before;
  const double peak_after = bench::peak_gflops(peak_kind, threads, kPeakCalls);
  const double peak = 0.5 * (peak_before + peak_after);
  const double flop = gflop_to(net, block) * 1e9 * static_cast<double>(batch);
  state.counters["prepare_ms"] = prepare_ms;
  state.counters["first_pass_ms"] = first_pass_ms;
  state.counters["peak_GFLOP/s"] = peak;
  state.counters["peak_before"] = peak_before;
  state.counters["peak_after"] = peak_after;
  state.counters["peak_kind"] = static_cast<double>(peak_kind);
  state.counters["of_peak"] = flop * static_cast<double>(state.iterations()) / loop_seconds / 1e9 / peak;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["GFLOP"] = flop / 1e9;  // per batch
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
  constexpr double MiB = 1 << 20;
  if (g_opt.allocator == "caching") {
    state.counters["peak_live_MiB"] = static_cast<double>(caching.peak_bytes_in_use()) / MiB;
    state.counters["arena_MiB"] = static_cast<double>(caching.bytes_reserved()) / MiB;
  } else if (g_opt.allocator == "planned") {
    const auto mem = planned.stats();
    state.counters["peak_live_MiB"] = static_cast<double>(mem.peak_bytes_in_use) / MiB;
    state.counters["arena_MiB"] = static_cast<double>(mem.arena_bytes) / MiB;
    state.counters["plans"] = static_cast<double>(mem.plans);
    state.counters["plain_allocs"] = static_cast<double>(mem.plain_allocations);
    state.counters["arena_allocs"] = static_cast<double>(mem.arena_allocations);
  }
  const double iters = static_cast<double>(state.iterations());
  // Page faults inside the timed passes: 0 when every activation is served from a warm arena.
  state.counters["faults/pass"] = faults / iters;
  for (const auto& [b, s] : block_seconds) {
    char name[32];
    std::snprintf(name, sizeof name, "b%02d_ms", b);
    state.counters[name] = 1e3 * s / iters;
  }
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
      else if (a.starts_with("--input="))
        g_opt.input = value("--input=");
      else if (a.starts_with("--dump="))
        g_opt.dump = value("--dump=");
      else if (a.starts_with("--t="))
        g_opt.t = std::stof(value("--t="));
      else if (a.starts_with("--blocks="))
        g_opt.blocks = cli::parse_int_list(value("--blocks="), "--blocks", /*blocks=*/true);
      else if (a.starts_with("--batch="))
        g_opt.batches = cli::parse_int_list(value("--batch="), "--batch");
      else if (a.starts_with("--threads="))
        g_opt.threads = cli::parse_int_list(value("--threads="), "--threads");
      else if (a == "--per-block")
        g_opt.per_block = true;
      else if (a == "--allocator=caching" || a == "--allocator=planned" || a == "--allocator=heap")
        g_opt.allocator = value("--allocator=");
      else if (a.starts_with("--int8="))
        g_opt.int8_modes = cli::split(value("--int8="));
      else if (a.starts_with("--int8-calibration="))
        g_opt.int8_calibration = value("--int8-calibration=");
      else if (a.starts_with("--precision=")) {
        g_opt.precisions.clear();
        for (const auto& p : cli::split(value("--precision=")))
          g_opt.precisions.push_back(parse_precision(p.c_str()));
      } else
        rest.push_back(argv[i]);
    }
    if (g_opt.weights.empty()) {
      g_net = std::make_unique<UNet>(UNet::random(UNetConfig::preset(g_opt.preset), 0));
    } else {
      LoadOptions lo;
      if (g_opt.preset != "fmnist_default") lo.preset = g_opt.preset;
      g_net = std::make_unique<UNet>(UNet::load(g_opt.weights, lo));
    }
    if (!g_opt.input.empty()) g_input = io::load_npy(g_opt.input);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_unet: %s\n", e.what());
    return 2;
  }
  for (const std::string& m : g_opt.int8_modes)
    if (m != "per-image" && m != "calibrated") {
      std::fprintf(stderr, "bench_unet: --int8: '%s' is not per-image or calibrated\n", m.c_str());
      return 2;
    }
  for (Precision p : g_opt.precisions)
    for (const std::string& mode : p == Precision::INT8 ? g_opt.int8_modes : std::vector<std::string>{""})
      for (int th : g_opt.threads)
        for (int n : g_opt.batches)
          for (int b : g_opt.blocks) {
            const std::string name = "unet/" + g_opt.preset +
                                     "/block:" + (b == 0 ? std::string("out") : std::to_string(b)) +
                                     "/batch:" + std::to_string(n) + "/threads:" + std::to_string(th) + "/" +
                                     precision_name(p) + (mode.empty() ? "" : "-" + mode);
            benchmark::RegisterBenchmark(name.c_str(),
                                         [=](benchmark::State& s) { run_forward(s, b, n, th, p, mode); })
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
          }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
