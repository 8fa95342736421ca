// Convolution and linear throughput on the CPU backend (oneDNN), in GFLOP/s (2 * multiply-adds),
// on the U-Net's big shapes, fp32 and bf16, 2 threads, warm (weights packed, primitive created).
//   bench_conv                      the quick set
//   bench_conv --large              adds the 256x256 convolutions of the 256x256 model (slow)
//   bench_conv --threads=N          another thread count (default 2)
// Google Benchmark's own flags (--benchmark_filter=..., --benchmark_format=json) work as usual.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "diffprobe/diffprobe.hpp"

using namespace diffprobe;

namespace {

int g_threads = 2;

Tensor random_tensor(const Shape& shape, unsigned seed, float scale, Layout layout = Layout::Contiguous) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<std::size_t>(shape.numel()));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_vector(shape, v, layout);
}

struct ConvBench {
  std::int64_t in, out, size, k;
  int stride;
  Layout layout;
  bool residual;
};

void run_conv(benchmark::State& state, ConvBench b, Precision precision) {
  const std::int64_t pad = b.k / 2;
  const ops::Conv2d conv(random_tensor(Shape{b.out, b.in, b.k, b.k}, 1, 0.05f),
                         random_tensor(Shape{b.out}, 2, 0.1f),
                         ops::Conv2dSpec{b.stride, static_cast<int>(pad)});
  const Tensor x = random_tensor(Shape{1, b.in, b.size, b.size}, 3, 1.0f, b.layout);
  const Shape out = conv.output_shape(x.shape());
  const Tensor res = b.residual ? random_tensor(out, 4, 1.0f, b.layout) : Tensor();
  CachingAllocator alloc;
  ExecContext ctx;
  ctx.threads = g_threads;
  ctx.precision = precision;
  ctx.allocator = &alloc;
  try {
    conv.prepare(ctx);
    conv.forward(x, ctx, res);  // warm-up: creates the primitive, fills the allocator's cache
  } catch (const UnsupportedError& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    Tensor y = conv.forward(x, ctx, res);
    benchmark::DoNotOptimize(y.raw());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      1e-9 * conv.flops(x.shape()) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(precision_name(precision)) + " " + layout_name(b.layout));
}

void run_linear(benchmark::State& state, std::int64_t rows, std::int64_t in, std::int64_t out,
                Precision precision) {
  const ops::Linear layer(random_tensor(Shape{out, in}, 5, 0.05f), random_tensor(Shape{out}, 6, 0.1f));
  const Tensor x = random_tensor(Shape{rows, in}, 7, 1.0f);
  CachingAllocator alloc;
  ExecContext ctx;
  ctx.threads = g_threads;
  ctx.precision = precision;
  ctx.allocator = &alloc;
  try {
    layer.prepare(ctx);
    layer.forward(x, ctx, true);
  } catch (const UnsupportedError& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    Tensor y = layer.forward(x, ctx, true);
    benchmark::DoNotOptimize(y.raw());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      1e-9 * layer.flops(rows) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(precision_name(precision));
}

void register_all(bool large) {
  std::vector<ConvBench> convs = {
      {256, 256, 64, 3, 1, Layout::NHWC, false},
      {256, 256, 128, 3, 1, Layout::NHWC, false},
      {512, 512, 32, 3, 1, Layout::NHWC, false},
      {1024, 1024, 16, 3, 1, Layout::NHWC, false},
      {1024, 1024, 8, 3, 1, Layout::NHWC, false},
      {256, 256, 64, 3, 2, Layout::NHWC, false},        // downsample
      {512, 1536, 32, 1, 1, Layout::NHWC, false},       // qkv projection
      {256, 256, 64, 3, 1, Layout::NHWC, true},         // fused residual
      {256, 256, 64, 3, 1, Layout::Contiguous, false},  // NCHW input
      {2048, 1024, 16, 3, 1, Layout::NHWC, false},      // decoder, after the skip concatenation
      {2048, 1024, 16, 1, 1, Layout::NHWC, false},      // decoder's skip projection
      {1024, 3072, 16, 1, 1, Layout::NHWC, false},      // qkv projection at 16x16
  };
  if (large) {
    convs.push_back({256, 256, 256, 3, 1, Layout::NHWC, false});
    convs.push_back({256, 256, 256, 3, 1, Layout::NHWC, true});  // ResBlock's second convolution
    convs.push_back({512, 512, 64, 3, 1, Layout::NHWC, false});  // blocks 8-9, 28-30
    convs.push_back({512, 512, 64, 3, 1, Layout::NHWC, true});
  }
  for (const Precision p : {Precision::FP32, Precision::BF16}) {
    for (const ConvBench& b : convs) {
      const std::string name = "conv" + std::to_string(b.k) + "x" + std::to_string(b.k) + "/" +
                               std::to_string(b.in) + "to" + std::to_string(b.out) + "/" +
                               std::to_string(b.size) + "x" + std::to_string(b.size) +
                               (b.stride == 2 ? "/stride2" : "") + (b.residual ? "/residual" : "") +
                               (b.layout == Layout::NHWC ? "" : "/nchw") + "/" + precision_name(p);
      benchmark::RegisterBenchmark(name.c_str(), run_conv, b, p)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
    const std::string lin = std::string("linear/3x1024to4096/silu/") + precision_name(p);
    benchmark::RegisterBenchmark(lin.c_str(), run_linear, 3, 1024, 4096, p)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool large = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string_view a(argv[i]);
    if (a == "--large") {
      large = true;
    } else if (a.starts_with("--threads=")) {
      g_threads = std::atoi(argv[i] + 10);
      if (g_threads < 1) g_threads = 1;
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  register_all(large);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
