// Convolution and linear throughput on the CPU backend (oneDNN), in GFLOP/s (2 * multiply-adds),
// on the U-Net's big shapes, fp32 and bf16, 2 threads, warm (weights packed, primitive created).
//   bench_conv                      the quick set
//   bench_conv --large              adds the 256x256 convolutions of the 256x256 model (slow)
//   bench_conv --threads=N          another thread count (default 2)
//   bench_conv --benchmark_filter=small3x3   a measured-not-built alternative: the 3x3
//                                   convolutions of 8x8 and 4x4 maps as oneDNN's direct convolution
//                                   vs one oneDNN matmul over an im2col copy (docs/performance.md)
//   bench_conv --benchmark_filter=int8   a measured-not-built alternative (issue 21's int8 mode):
//                                   oneDNN's int8 convolution (s8 activations with one scale per
//                                   tensor, s8 weights with one scale per output channel, f32 out,
//                                   VNNI) against its fp32 and bf16 ones on the same shape, with the
//                                   int8 and bf16 outputs' error relative to fp32 (docs/performance.md)
// Google Benchmark's own flags (--benchmark_filter=..., --benchmark_format=json) work as usual.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
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
    conv.forward_add(x, res, ctx);  // warm-up: creates the primitive, fills the allocator's cache
  } catch (const UnsupportedError& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    Tensor y = conv.forward_add(x, res, ctx);
    benchmark::DoNotOptimize(y.raw());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      1e-9 * conv.flops(x.shape()) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(precision_name(precision)) + " " + layout_name(b.layout));
}

// ---- int8 through oneDNN directly (not a diffprobe precision yet) ----------------------------
// What an int8 mode would run: the f32 input quantised to s8 by a reorder with scale 127/max|x|
// (one scale per tensor), weights to s8 with one scale per output channel (max|w_o|/127), the
// convolution's output scales their products (fixed when the primitive is created: oneDNN 2.6's
// brgemm convolutions refuse runtime scales), f32 output. oneDNN 2.x adds the bias before the
// output scale (dst = scale * (acc + bias)), so the bias is divided by the scale first. The timed
// loop holds the input quantisation and the convolution; counters: GFLOP/s (of the fp32 count)
// and err = max |y - y_fp32| / max |y_fp32| (0 for the fp32 row).
void run_onednn_precision(benchmark::State& state, std::int64_t C, std::int64_t O, std::int64_t S,
                          std::int64_t K, int kind /* 0 fp32, 1 bf16, 2 int8 */) {
  using dnnl::memory;
  using tag = memory::format_tag;
  using dt = memory::data_type;
  omp_set_num_threads(g_threads);
  const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const memory::dim pad = K / 2;
  const memory::dims sd{1, C, S, S}, wd{O, C, K, K}, dd{1, O, S, S};
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<std::size_t>(C * S * S)), w(static_cast<std::size_t>(O * C * K * K)),
      b(static_cast<std::size_t>(O));
  for (auto& v : x) v = nd(rng);
  for (auto& v : w) v = nd(rng) / std::sqrt(static_cast<float>(C * K * K));
  for (auto& v : b) v = 0.1f * nd(rng);
  const std::int64_t per_o = C * K * K;
  float xmax = 0;
  for (float v : x) xmax = std::max(xmax, std::fabs(v));
  const float sx = xmax / 127.0f;
  std::vector<float> scales(static_cast<std::size_t>(O)), inv_w(static_cast<std::size_t>(O)), bias(b);
  for (std::int64_t o = 0; o < O; ++o) {
    float m = 0;
    for (std::int64_t k = 0; k < per_o; ++k)
      m = std::max(m, std::fabs(w[static_cast<std::size_t>(o * per_o + k)]));
    const float sw = m / 127.0f;
    scales[static_cast<std::size_t>(o)] = sx * sw;
    inv_w[static_cast<std::size_t>(o)] = 1.0f / sw;
    if (kind == 2) bias[static_cast<std::size_t>(o)] /= scales[static_cast<std::size_t>(o)];
  }
  auto conv_out = [&](int k, std::vector<float>& y, benchmark::State* timed) {
    const dt src_t = k == 0 ? dt::f32 : k == 1 ? dt::bf16 : dt::s8;
    const dt wei_t = k == 0 ? dt::f32 : k == 1 ? dt::bf16 : dt::s8;
    dnnl::primitive_attr attr;
    if (k == 2) attr.set_output_scales(2, scales);
    const memory::desc src_md(sd, src_t, tag::nhwc), wei_md(wd, wei_t, tag::any),
        dst_md(dd, dt::f32, tag::nhwc), bias_md({O}, dt::f32, tag::x);
    const dnnl::convolution_forward::primitive_desc pd({dnnl::prop_kind::forward_inference,
                                                        dnnl::algorithm::convolution_direct,
                                                        src_md,
                                                        wei_md,
                                                        bias_md,
                                                        dst_md,
                                                        {1, 1},
                                                        {pad, pad},
                                                        {pad, pad}},
                                                       attr, eng);
    memory user_x({sd, dt::f32, tag::nhwc}, eng, x.data()), user_w({wd, dt::f32, tag::oihw}, eng, w.data());
    memory src(pd.src_desc(), eng), wei(pd.weights_desc(), eng), dst(pd.dst_desc(), eng, y.data()),
        bias_m(pd.bias_desc(), eng, k == 2 ? bias.data() : b.data());
    dnnl::primitive_attr wq;
    if (k == 2) wq.set_output_scales(1, inv_w);
    dnnl::reorder(user_w, wei, wq).execute(strm, user_w, wei);
    dnnl::primitive_attr xq;
    if (k == 2) xq.set_output_scales(0, {1.0f / sx});
    const dnnl::reorder to_src(user_x, src, xq);
    const dnnl::convolution_forward conv(pd);
    const std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bias_m}, {DNNL_ARG_DST, dst}};
    auto once = [&] {
      if (k != 0) to_src.execute(strm, user_x, src);
      conv.execute(strm, args);
    };
    if (k == 0) dnnl::reorder(user_x, src).execute(strm, user_x, src);
    once();
    strm.wait();
    if (timed) {
      for (auto _ : *timed) {
        once();
        strm.wait();
      }
      timed->SetLabel(pd.impl_info_str());
    }
  };
  std::vector<float> ref(static_cast<std::size_t>(O * S * S)), y(ref.size());
  try {
    conv_out(0, ref, nullptr);
    conv_out(kind, y, &state);
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
    return;
  }
  double err = 0, big = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    err = std::max(err, static_cast<double>(std::fabs(y[i] - ref[i])));
    big = std::max(big, static_cast<double>(std::fabs(ref[i])));
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2e-9 * static_cast<double>(O * S * S * per_o) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
  state.counters["err"] = err / big;
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

// A 3x3 stride-1 pad-1 NHWC convolution with bias and residual (sum post-op), on oneDNN
// directly: as its convolution primitive (`im2col` false), or as an im2col copy [N*H*W, 9*C]
// (kh, kw, c order) times the weights packed once as a [9*C, O] matmul operand. Both write the
// same numbers up to summation order; the copy is part of the timed work.
void run_small3x3(benchmark::State& state, std::int64_t N, std::int64_t C, std::int64_t O, std::int64_t S,
                  bool im2col) {
  using dnnl::memory;
  using tag = memory::format_tag;
  using dt = memory::data_type;
  omp_set_num_threads(g_threads);
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const Tensor x = random_tensor(Shape{N * S * S * C}, 3, 1.0f),
               w = random_tensor(Shape{O * C * 9}, 1, 0.05f), b = random_tensor(Shape{O}, 2, 0.1f),
               res = random_tensor(Shape{N * S * S * O}, 4, 1.0f);
  std::vector<float> y(static_cast<std::size_t>(N * S * S * O));
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops po;
  po.append_sum(1.0f);
  attr.set_post_ops(po);
  memory user_w({{O, C, 3, 3}, dt::f32, tag::oihw}, eng, w.raw());
  const std::int64_t M = N * S * S, K = 9 * C;
  std::vector<float> col(im2col ? static_cast<std::size_t>(M * K) : 0);
  // The primitive, the layout it wants its weights in, and how it sees src and dst.
  dnnl::primitive prim;
  memory::desc src, dst, bias, want, scratchpad_md;
  memory user = user_w;  // the weights as `prim` reads them before packing
  std::vector<float> plain;
  if (!im2col) {
    src = memory::desc({N, C, S, S}, dt::f32, tag::nhwc);
    dst = memory::desc({N, O, S, S}, dt::f32, tag::nhwc);
    bias = memory::desc({O}, dt::f32, tag::a);
    const dnnl::convolution_forward::primitive_desc pd({dnnl::prop_kind::forward_inference,
                                                        dnnl::algorithm::convolution_direct,
                                                        src,
                                                        memory::desc({O, C, 3, 3}, dt::f32, tag::any),
                                                        bias,
                                                        dst,
                                                        {1, 1},
                                                        {1, 1},
                                                        {1, 1}},
                                                       attr, eng);
    prim = dnnl::convolution_forward(pd);
    want = pd.weights_desc();
    scratchpad_md = pd.scratchpad_desc();
  } else {
    src = memory::desc({M, K}, dt::f32, tag::ab);
    dst = memory::desc({M, O}, dt::f32, tag::ab);
    bias = memory::desc({1, O}, dt::f32, tag::ab);
    const dnnl::matmul::primitive_desc pd({src, memory::desc({K, O}, dt::f32, tag::any), bias, dst}, attr,
                                          eng);
    prim = dnnl::matmul(pd);
    want = pd.weights_desc();
    scratchpad_md = pd.scratchpad_desc();
    // The [K, O] matrix with rows in (kh, kw, c) order is the 4-D weights in format cdba.
    plain.resize(static_cast<std::size_t>(K * O));
    memory dense({{O, C, 3, 3}, dt::f32, tag::cdba}, eng, plain.data());
    dnnl::reorder(user_w, dense).execute(strm, user_w, dense);
    user = memory({{K, O}, dt::f32, tag::ab}, eng, plain.data());
  }
  memory packed(want, eng);
  dnnl::reorder(user, packed).execute(strm, user, packed);
  strm.wait();
  std::vector<char> scratch(scratchpad_md.get_size() + 64);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(src, eng, im2col ? col.data() : x.raw())},
                                       {DNNL_ARG_WEIGHTS, packed},
                                       {DNNL_ARG_BIAS, memory(bias, eng, b.raw())},
                                       {DNNL_ARG_DST, memory(dst, eng, y.data())},
                                       {DNNL_ARG_SCRATCHPAD, memory(scratchpad_md, eng, scratch.data())}};
  const float* xp = x.data<float>();
  const auto once = [&] {
    std::copy(res.data<float>(), res.data<float>() + y.size(), y.data());
    if (im2col) {
#pragma omp parallel for schedule(static)
      for (std::int64_t p = 0; p < M; ++p) {
        const std::int64_t n = p / (S * S), h = p % (S * S) / S, wv = p % S;
        float* row = col.data() + p * K;
        for (int kh = 0; kh < 3; ++kh)
          for (int kw = 0; kw < 3; ++kw) {
            const std::int64_t ih = h + kh - 1, iw = wv + kw - 1;
            float* d = row + (kh * 3 + kw) * C;
            if (ih < 0 || ih >= S || iw < 0 || iw >= S)
              std::fill(d, d + C, 0.0f);
            else
              std::memcpy(d, xp + ((n * S + ih) * S + iw) * C, static_cast<std::size_t>(C) * sizeof(float));
          }
      }
    }
    prim.execute(strm, args);
    strm.wait();
  };
  once();
  for (auto _ : state) once();
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * static_cast<double>(M * K * O) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

void register_small3x3() {
  struct Shape3 {
    std::int64_t n, c, o, s;
  };
  for (const Shape3 sh : {Shape3{1, 1024, 1024, 8}, Shape3{1, 2048, 1024, 8}, Shape3{8, 1024, 1024, 8},
                          Shape3{1, 512, 512, 8}, Shape3{1, 1024, 1024, 4}, Shape3{8, 1024, 1024, 4},
                          Shape3{1, 1024, 1024, 16}, Shape3{1, 2048, 1024, 16}, Shape3{8, 1024, 1024, 16},
                          Shape3{1, 512, 512, 16}, Shape3{1, 512, 512, 32}})
    for (const bool im2col : {false, true}) {
      const std::string name = "small3x3/" + std::string(im2col ? "im2col_matmul" : "direct") + "/N" +
                               std::to_string(sh.n) + "/" + std::to_string(sh.c) + "to" +
                               std::to_string(sh.o) + "/" + std::to_string(sh.s) + "x" +
                               std::to_string(sh.s) + "/fp32";
      benchmark::RegisterBenchmark(name.c_str(), run_small3x3, sh.n, sh.c, sh.o, sh.s, im2col)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
}

void register_all(bool large) {
  register_small3x3();
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
  struct Int8Shape {
    std::int64_t c, o, s, k;
  };
  for (const Int8Shape& sh :
       {Int8Shape{256, 256, 64, 3}, Int8Shape{512, 512, 32, 3}, Int8Shape{1024, 1024, 16, 3},
        Int8Shape{1024, 1024, 8, 3}, Int8Shape{512, 1536, 32, 1}, Int8Shape{128, 128, 256, 3}})
    for (int kind : {0, 1, 2}) {
      const std::string name = "int8/conv" + std::to_string(sh.k) + "x" + std::to_string(sh.k) + "/" +
                               std::to_string(sh.c) + "to" + std::to_string(sh.o) + "/" +
                               std::to_string(sh.s) + "x" + std::to_string(sh.s) + "/" +
                               (kind == 0   ? "fp32"
                                : kind == 1 ? "bf16"
                                            : "int8");
      benchmark::RegisterBenchmark(name.c_str(), run_onednn_precision, sh.c, sh.o, sh.s, sh.k, kind)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
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
