// CPU norm / attention / small-op throughput at the U-Net's shapes, 2 threads, NHWC. Arg "bf16" 1:
// bf16 activations (input and output; for attention also bf16 operands), as the bf16 mode runs.
// Memory-bound ops report bytes/s of compulsory traffic (inputs read once + output written once),
// attention FLOP/s of its two matmuls (ops::attention_flops); both print as e.g. "bytes=12.3G/s".
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "diffprobe/diffprobe.hpp"

using namespace diffprobe;

namespace {

constexpr int kThreads = 2;

Tensor random_tensor(const Shape& s, Layout layout) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  for (auto& x : v) x = d(rng);
  return Tensor::from_vector(s, v, layout);
}

// Outputs come from a caching allocator, as in a forward pass: no page faults in the loop.
ExecContext bench_context(bool bf16 = false) {
  static CachingAllocator alloc;
  ExecContext ctx;
  ctx.threads = kThreads;
  ctx.allocator = &alloc;
  if (bf16) {
    ctx.activations = DType::BF16;
    ctx.precision = Precision::BF16;
  }
  return ctx;
}

Tensor activation(const Tensor& t, bool bf16) { return bf16 ? t.to_dtype(DType::BF16) : t; }

void set_gbps(benchmark::State& state, double bytes) {
  state.counters["bytes"] =
      benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_GroupNormSiluScaleShift(benchmark::State& state) {
  const Shape s{state.range(0), state.range(1), state.range(2), state.range(2)};
  const std::int64_t C = s[1];
  const bool bf16 = state.range(3) != 0;
  const Tensor x = activation(random_tensor(s, Layout::NHWC), bf16);
  const Tensor gamma = random_tensor(Shape{C}, Layout::Contiguous),
               beta = random_tensor(Shape{C}, Layout::Contiguous);
  ops::GroupNormArgs args;
  args.scale_shift = random_tensor(Shape{s[0], 2 * C}, Layout::Contiguous);
  args.silu = true;
  const ExecContext ctx = bench_context(bf16);
  for (auto _ : state) benchmark::DoNotOptimize(ops::group_norm(x, gamma, beta, args, ctx));
  set_gbps(state, 2.0 * static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_GroupNormSiluScaleShift)
    ->ArgNames({"N", "C", "HW", "bf16"})
    ->Args({1, 256, 256, 0})
    ->Args({1, 256, 256, 1})
    ->Args({8, 512, 32, 0})
    ->Args({8, 512, 32, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// ResBlock-down's input path, pool(silu(GN(x))) at 256x256x256: fused (arg 1) or GroupNorm then
// avg_pool2x2 (arg 0). Bytes: x read twice (statistics, apply) and the pooled output written.
void BM_GroupNormSiluPool(benchmark::State& state) {
  const Shape s{1, 256, 256, 256};
  const Tensor x = random_tensor(s, Layout::NHWC);
  const Tensor gamma = random_tensor(Shape{256}, Layout::Contiguous),
               beta = random_tensor(Shape{256}, Layout::Contiguous);
  ops::GroupNormArgs args;
  args.silu = true;
  const bool fused = state.range(0) != 0;
  args.avg_pool2x2 = fused;
  const ExecContext ctx = bench_context();
  for (auto _ : state) {
    if (fused)
      benchmark::DoNotOptimize(ops::group_norm(x, gamma, beta, args, ctx));
    else
      benchmark::DoNotOptimize(ops::avg_pool2x2(ops::group_norm(x, gamma, beta, args, ctx), ctx));
  }
  set_gbps(state, 2.25 * static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_GroupNormSiluPool)
    ->ArgName("fused")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_Attention(benchmark::State& state) {
  const std::int64_t side = state.range(0), C = state.range(1);
  const int heads = static_cast<int>(C / 64);
  const Shape s{1, 3 * C, side, side};
  const bool bf16 = state.range(2) != 0;
  const Tensor qkv = activation(random_tensor(s, Layout::NHWC), bf16);
  const ExecContext ctx = bench_context(bf16);
  for (auto _ : state) benchmark::DoNotOptimize(ops::attention(qkv, heads, ops::QkvOrder::Legacy, ctx));
  state.counters["FLOP"] =
      benchmark::Counter(ops::attention_flops(s, heads), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}
// side x side tokens, C channels, heads of 64.
BENCHMARK(BM_Attention)
    ->ArgNames({"side", "C", "bf16"})
    ->ArgsProduct({{32}, {512}, {0, 1}})
    ->ArgsProduct({{16, 8}, {1024}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_UpsampleNearest2x(benchmark::State& state) {
  const Tensor x = random_tensor(Shape{1, 1024, 16, 16}, Layout::NHWC);
  const ExecContext ctx = bench_context();
  for (auto _ : state) benchmark::DoNotOptimize(ops::upsample_nearest2x(x, ctx));
  set_gbps(state, 5.0 * static_cast<double>(x.nbytes()));  // read x, write 4x
}
BENCHMARK(BM_UpsampleNearest2x)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_ConcatChannels(benchmark::State& state) {
  const Tensor a = random_tensor(Shape{1, 1024, 16, 16}, Layout::NHWC);
  const Tensor b = random_tensor(Shape{1, 1024, 16, 16}, Layout::NHWC);
  const ExecContext ctx = bench_context();
  for (auto _ : state) benchmark::DoNotOptimize(ops::concat_channels(a, b, ctx));
  set_gbps(state, 4.0 * static_cast<double>(a.nbytes()));  // read a and b, write both
}
BENCHMARK(BM_ConcatChannels)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Silu(benchmark::State& state) {
  const Tensor x = random_tensor(Shape{1, 256, 128, 128}, Layout::NHWC);
  const ExecContext ctx = bench_context();
  for (auto _ : state) benchmark::DoNotOptimize(ops::silu(x, ctx));
  set_gbps(state, 2.0 * static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_Silu)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
