// CUDA backend benchmarks: cuDNN convolution per precision, fused GroupNorm, flash attention, a
// small op, and host <-> device copies, at U-Net-like sizes. Each iteration enqueues the op and
// waits for the device, so times are the GPU's (plus a few microseconds of launch and wait).
// Counters: FLOP/s or bytes/s, and "mallocs_per_iter" (cudaMalloc calls per iteration after the
// first: 0 shows the memory pool at work). Without a GPU (or a CUDA build) every benchmark reports
// "no CUDA device" and exits cleanly.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "diffprobe/diffprobe.hpp"
#ifdef DIFFPROBE_HAVE_CUDA_BACKEND
#include "diffprobe_cuda.hpp"
#endif

using namespace diffprobe;

namespace {

bool have_gpu(benchmark::State& state) {
#ifdef DIFFPROBE_HAVE_CUDA_BACKEND
  if (cuda_available()) return true;
#endif
  state.SkipWithError("no CUDA device");
  return false;
}

void sync() {
#ifdef DIFFPROBE_HAVE_CUDA_BACKEND
  cuda::synchronize(0);
#endif
}

std::size_t mallocs() {
#ifdef DIFFPROBE_HAVE_CUDA_BACKEND
  return cuda::pool_stats(0).device_allocations;
#else
  return 0;
#endif
}

Tensor random_gpu(const Shape& s, Layout layout = Layout::Contiguous, float stddev = 1.0f) {
  std::mt19937 rng(static_cast<std::uint32_t>(s.numel()));
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  for (auto& x : v) x = d(rng);
  return Tensor::from_vector(s, v, layout).to_device(Device::cuda());
}

ExecContext gpu_ctx(Precision p = Precision::FP32) {
  ExecContext c;
  c.device = Device::cuda();
  c.precision = p;
  return c;
}

// Runs `op` once to warm up (plans, weights, pool), then times it; reports pool growth per iteration.
template <class Op> void timed(benchmark::State& state, Op&& op) {
  op();
  sync();
  const std::size_t m0 = mallocs();
  for (auto _ : state) {
    op();
    sync();
  }
  state.counters["mallocs_per_iter"] =
      static_cast<double>(mallocs() - m0) /
      static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
}

// Arg: precision (0 fp32, 1 bf16, 2 fp16).
void BM_CudaConv3x3(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const auto p = static_cast<Precision>(state.range(0));
  const Shape in{8, 256, 32, 32};
  const ops::Conv2d conv(random_gpu(Shape{256, 256, 3, 3}, Layout::Contiguous, 0.02f),
                         random_gpu(Shape{256}));
  const Tensor x = random_gpu(in, Layout::NHWC), res = random_gpu(in, Layout::NHWC);
  timed(state, [&] { benchmark::DoNotOptimize(conv.forward_add(x, res, gpu_ctx(p))); });
  state.counters["FLOP/s"] =
      benchmark::Counter(conv.flops(in), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(precision_name(p));
}
BENCHMARK(BM_CudaConv3x3)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_CudaGroupNormSilu(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const Shape s{8, 512, 32, 32};
  const Tensor x = random_gpu(s, Layout::NHWC), g = random_gpu(Shape{512}), b = random_gpu(Shape{512});
  ops::GroupNormArgs args;
  args.silu = true;
  args.scale_shift = random_gpu(Shape{8, 1024}, Layout::Contiguous, 0.1f);
  timed(state, [&] { benchmark::DoNotOptimize(ops::group_norm(x, g, b, args, gpu_ctx())); });
  state.counters["bytes/s"] = benchmark::Counter(2.0 * static_cast<double>(s.numel()) * 4.0,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaGroupNormSilu)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Args: side (tokens = side^2), head size; 512 channels, NHWC, split order.
void BM_CudaAttention(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const std::int64_t side = state.range(0), d = state.range(1), C = 512;
  const Shape s{8, 3 * C, side, side};
  const Tensor qkv = random_gpu(s, Layout::NHWC);
  const int heads = static_cast<int>(C / d);
  timed(state,
        [&] { benchmark::DoNotOptimize(ops::attention(qkv, heads, ops::QkvOrder::Split, gpu_ctx())); });
  state.counters["FLOP/s"] =
      benchmark::Counter(ops::attention_flops(s, heads), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaAttention)
    ->Args({16, 64})
    ->Args({32, 64})
    ->Args({16, 128})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_CudaSilu(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const Tensor x = random_gpu(Shape{8, 256, 64, 64}, Layout::NHWC);
  timed(state, [&] { benchmark::DoNotOptimize(ops::silu(x, gpu_ctx())); });
  state.counters["bytes/s"] = benchmark::Counter(2.0 * static_cast<double>(x.nbytes()),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaSilu)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Arg: 0 host -> device, 1 device -> host; 64 MiB.
void BM_CudaCopy(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const Shape s{16 << 20};
  const bool to_host = state.range(0) == 1;
  const Tensor h = Tensor::zeros(s);
  const Tensor d = h.to_device(Device::cuda());
  timed(state, [&] {
    benchmark::DoNotOptimize(to_host ? d.to_device(Device::cpu()) : h.to_device(Device::cuda()));
  });
  state.counters["bytes/s"] =
      benchmark::Counter(static_cast<double>(h.nbytes()), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(to_host ? "device->host" : "host->device");
}
BENCHMARK(BM_CudaCopy)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
