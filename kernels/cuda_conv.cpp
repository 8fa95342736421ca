// Convolution through cuDNN, "describe once, run many times", and Linear:
//   - weights are converted once per (device, precision, filter layout) into the op's cache: the
//     PyTorch [O, I, k, k] f32 weight becomes [O, k, k, I] (cuDNN's NHWC filter, KRSC) in the compute
//     type; an NCHW fp32 convolution reads the weight in place;
//   - one plan per (device, precision, input shape, layout) holds the cuDNN descriptors and the
//     algorithm chosen once by cuDNN's heuristics.
// Precision: FP32 runs f32 data with FMA math only (no TF32), so results match the CPU backend to
// fp32 rounding. BF16 / FP16 convert the input and weights, run cuDNN with fp32 accumulation on the
// tensor cores, and add bias and residual in fp32 while converting the result back.
// Bias and residual: in FP32, when cuDNN offers IMPLICIT_PRECOMP_GEMM (the only algorithm of
// cudnnConvolutionBiasActivationForward with an identity activation), the convolution adds both
// itself (z = residual, alpha2 = 1); otherwise one fused epilogue kernel adds them.
// Linear: the U-Net's GEMMs (embedding MLPs) have a handful of rows, so a warp-per-output kernel
// (elementwise.cu) serves them; 16-bit weights are converted once, like the convolution's.
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_common.hpp"
#include "cuda_ops.hpp"
#include "kernels.cuh"

namespace diffprobe::cuda {
namespace {

using i64 = std::int64_t;

constexpr std::size_t kMaxWorkspace = std::size_t{1} << 30;

void check_dnn(cudnnStatus_t st, const char* where) {
  if (st == CUDNN_STATUS_SUCCESS) return;
  const std::string why = std::string("cuDNN: ") + cudnnGetErrorString(st);
  if (st == CUDNN_STATUS_NOT_SUPPORTED) throw UnsupportedError(where, why);
  throw DeviceError(where, why);
}

// One cuDNN handle per device, bound to the device's stream. A handle serves one call at a time;
// calls only enqueue work, so holding the lock is short.
struct Libraries {
  std::mutex mu;
  cudnnHandle_t dnn = nullptr;
};

Libraries& libraries(int dev) {
  static std::array<std::atomic<Libraries*>, 64> slots{};
  static std::mutex create_mu;
  require_device(dev, "cuda libraries");
  auto& slot = slots[static_cast<std::size_t>(dev)];
  if (Libraries* l = slot.load(std::memory_order_acquire)) return *l;
  std::lock_guard lock(create_mu);
  if (Libraries* l = slot.load(std::memory_order_acquire)) return *l;
  auto lib = std::make_unique<Libraries>();
  DeviceGuard guard(dev);
  check_dnn(cudnnCreate(&lib->dnn), "cudnnCreate");
  check_dnn(cudnnSetStream(lib->dnn, stream(dev)), "cudnnSetStream");
  Libraries* l = lib.release();  // never destroyed, like the streams
  slot.store(l, std::memory_order_release);
  return *l;
}

kern::Elem elem_of(Precision p) {
  switch (p) {
    case Precision::FP16: return kern::Elem::F16;
    case Precision::BF16: return kern::Elem::BF16;
    case Precision::FP32:
    case Precision::INT8: break;  // (refused by require_precision)
  }
  return kern::Elem::F32;
}

DType dtype_of(Precision p) {
  switch (p) {
    case Precision::FP16: return DType::F16;
    case Precision::BF16: return DType::BF16;
    case Precision::FP32:
    case Precision::INT8: break;
  }
  return DType::F32;
}

cudnnDataType_t dnn_type(Precision p) {
  switch (p) {
    case Precision::FP16: return CUDNN_DATA_HALF;
    case Precision::BF16: return CUDNN_DATA_BFLOAT16;
    case Precision::FP32:
    case Precision::INT8: break;
  }
  return CUDNN_DATA_FLOAT;
}

std::string device_key(int dev, const char* what, Precision p) {
  return "cuda" + std::to_string(dev) + "." + what + "." + precision_name(p);
}

// int8 is a CPU mode (oneDNN's VNNI convolutions); the GPU runs fp32, fp16 and bf16.
void require_precision(Precision p, const char* where) {
  if (p == Precision::INT8)
    throw UnsupportedError(where, "int8 runs on the CPU only; use fp16 or bf16 on the GPU");
}

void require_on(const Tensor& t, Device dev, const char* where, const char* what) {
  if (!(t.device() == dev))
    throw DeviceError(where, std::string(what) + " is on " + t.device().str() + ", the context asks for " +
                                 dev.str() + " (move the weights there first)");
}

// ---- convolution ------------------------------------------------------------------------------

struct ConvWeights {
  Tensor w;  // [O, k, k, I] (NHWC filter) or [O, I, k, k], in the compute type
};

std::shared_ptr<ConvWeights> conv_weights(const ops::Conv2d& op, OpCache& cache, int dev, Precision p,
                                          bool nhwc) {
  const std::string key = device_key(dev, nhwc ? "conv.w.krsc" : "conv.w.kcrs", p);
  return cache.get_or_create<ConvWeights>(key, [&] {
    auto cw = std::make_shared<ConvWeights>();
    const i64 O = op.out_channels(), I = op.in_channels(), k = op.kernel_size();
    if (p == Precision::FP32 && !nhwc) {
      cw->w = op.weight();
      return cw;
    }
    const Shape shape = nhwc ? Shape{O, k, k, I} : Shape{O, I, k, k};
    cw->w = Tensor::empty(shape, dtype_of(p), Layout::Contiguous, Device::cuda(dev));
    check(
        kern::reorder_weight(op.weight().data<float>(), cw->w.raw(), elem_of(p), O, I, k, nhwc, stream(dev)),
        "Conv2d weights");
    return cw;
  });
}

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t act = nullptr;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  std::size_t workspace = 0;
  bool fusable = false;              // bias and residual inside cuDNN (FP32, IMPLICIT_PRECOMP_GEMM)
  bool use_fp32 = false;             // no 16-bit algorithm for this shape: run it in FP32
  std::atomic<bool> fused_ok{true};  // cleared if cuDNN turns the fused call down at run time

  ConvPlan() = default;
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;
  ~ConvPlan() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (bias) cudnnDestroyTensorDescriptor(bias);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (act) cudnnDestroyActivationDescriptor(act);
  }
};

bool is_fft(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING;
}

int to_int(i64 v, const char* where) {
  if (v > 0x7fffffff)
    throw UnsupportedError(where, "dimension " + std::to_string(v) + " exceeds cuDNN's int range");
  return static_cast<int>(v);
}

std::shared_ptr<ConvPlan> make_conv_plan(const ops::Conv2d& op, const Shape& in, bool nhwc, Precision p,
                                         int dev) {
  constexpr const char* where = "Conv2d";
  auto plan = std::make_shared<ConvPlan>();
  const Shape out = op.output_shape(in);
  const cudnnTensorFormat_t fmt = nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  const cudnnDataType_t dt = dnn_type(p);
  const int k = to_int(op.kernel_size(), where), pad = op.spec().padding, stride = op.spec().stride;
  check_dnn(cudnnCreateTensorDescriptor(&plan->x), where);
  check_dnn(cudnnCreateTensorDescriptor(&plan->y), where);
  check_dnn(cudnnCreateFilterDescriptor(&plan->w), where);
  check_dnn(cudnnCreateConvolutionDescriptor(&plan->conv), where);
  check_dnn(cudnnSetTensor4dDescriptor(plan->x, fmt, dt, to_int(in[0], where), to_int(in[1], where),
                                       to_int(in[2], where), to_int(in[3], where)),
            where);
  check_dnn(cudnnSetTensor4dDescriptor(plan->y, fmt, dt, to_int(out[0], where), to_int(out[1], where),
                                       to_int(out[2], where), to_int(out[3], where)),
            where);
  check_dnn(cudnnSetFilter4dDescriptor(plan->w, dt, fmt, to_int(op.out_channels(), where),
                                       to_int(op.in_channels(), where), k, k),
            where);
  check_dnn(cudnnSetConvolution2dDescriptor(plan->conv, pad, pad, stride, stride, 1, 1,
                                            CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
            where);
  const bool fp32 = p == Precision::FP32;
  // FP32: FMA math only; TF32 (allowed by CUDNN_DEFAULT_MATH on Ampere and later) would cost ~3 digits.
  const cudnnMathType_t math = fp32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  check_dnn(cudnnSetConvolutionMathType(plan->conv, math), where);

  int on = 0, oc = 0, oh = 0, ow = 0;
  check_dnn(cudnnGetConvolution2dForwardOutputDim(plan->conv, plan->x, plan->w, &on, &oc, &oh, &ow), where);
  if (on != out[0] || oc != out[1] || oh != out[2] || ow != out[3])
    throw DeviceError(where, "cuDNN's output shape disagrees with " + out.str());

  Libraries& lib = libraries(dev);
  std::lock_guard lock(lib.mu);
  std::array<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT> perfs{};
  int returned = 0;
  check_dnn(cudnnGetConvolutionForwardAlgorithm_v7(lib.dnn, plan->x, plan->w, plan->conv, plan->y,
                                                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perfs.data()),
            where);
  // Candidates in the heuristics' order; FP32 leaves out tensor-op math and FFT (less accurate),
  // and tries IMPLICIT_PRECOMP_GEMM first since it fuses bias and residual.
  std::vector<cudnnConvolutionFwdAlgoPerf_t> cands;
  for (int i = 0; i < returned; ++i) {
    const auto& pf = perfs[static_cast<std::size_t>(i)];
    if (pf.status != CUDNN_STATUS_SUCCESS || pf.memory > kMaxWorkspace) continue;
    if (fp32 && (is_fft(pf.algo) || pf.mathType == CUDNN_TENSOR_OP_MATH ||
                 pf.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
      continue;
    cands.push_back(pf);
  }
  if (fp32)
    std::stable_partition(cands.begin(), cands.end(), [](const cudnnConvolutionFwdAlgoPerf_t& pf) {
      return pf.algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
    });
  bool chosen = false;
  for (const auto& pf : cands) {
    const cudnnMathType_t m = fp32 ? CUDNN_FMA_MATH : pf.mathType;
    std::size_t ws = 0;
    if (cudnnSetConvolutionMathType(plan->conv, m) != CUDNN_STATUS_SUCCESS) continue;
    if (cudnnGetConvolutionForwardWorkspaceSize(lib.dnn, plan->x, plan->w, plan->conv, plan->y, pf.algo,
                                                &ws) != CUDNN_STATUS_SUCCESS ||
        ws > kMaxWorkspace)
      continue;
    plan->algo = pf.algo;
    plan->workspace = ws;
    chosen = true;
    break;
  }
  if (!chosen && !fp32) {  // a shape cuDNN has no 16-bit kernel for: FP32 is slower, never less accurate
    plan->use_fp32 = true;
    return plan;
  }
  if (!chosen)
    throw UnsupportedError(where, std::string("cuDNN offers no forward algorithm for input ") + in.str() +
                                      " " + layout_name(nhwc ? Layout::NHWC : Layout::Contiguous) + " in " +
                                      precision_name(p));
  if (fp32 && plan->algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) {
    check_dnn(cudnnCreateTensorDescriptor(&plan->bias), where);
    check_dnn(cudnnSetTensor4dDescriptor(plan->bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1,
                                         to_int(op.out_channels(), where), 1, 1),
              where);
    check_dnn(cudnnCreateActivationDescriptor(&plan->act), where);
    check_dnn(
        cudnnSetActivationDescriptor(plan->act, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0),
        where);
    plan->fusable = true;
  }
  return plan;
}

std::shared_ptr<ConvPlan> conv_plan(const ops::Conv2d& op, OpCache& cache, const Shape& in, bool nhwc,
                                    Precision p, int dev) {
  const std::string key = device_key(dev, "conv.plan", p) + "." + std::to_string(in[0]) + "x" +
                          std::to_string(in[1]) + "x" + std::to_string(in[2]) + "x" + std::to_string(in[3]) +
                          (nhwc ? ".nhwc" : ".nchw");
  return cache.get_or_create<ConvPlan>(key, [&] { return make_conv_plan(op, in, nhwc, p, dev); });
}

// A zero bias for fused convolutions that have none (cuDNN's fused call needs one).
const float* zero_bias(const ops::Conv2d& op, OpCache& cache, int dev) {
  struct Zeros {
    Tensor t;
  };
  auto z = cache.get_or_create<Zeros>("cuda" + std::to_string(dev) + ".conv.zero_bias", [&] {
    auto r = std::make_shared<Zeros>();
    r->t = Tensor::zeros(Shape{op.out_channels()}, DType::F32, Layout::Contiguous, Device::cuda(dev));
    return r;
  });
  return z->t.data<float>();
}

}  // namespace

Tensor conv2d(const ops::Conv2d& op, OpCache& cache, const Tensor& x, const Tensor& residual,
              const ExecContext& ctx) {
  constexpr const char* where = "Conv2d";
  require_precision(ctx.precision, where);
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const bool nhwc = x.layout() == Layout::NHWC;
  Precision p = ctx.precision;
  const Shape out_shape = op.output_shape(x.shape());
  Tensor y = new_tensor(out_shape, x.layout(), x, ctx);
  if (y.numel() == 0) return y;
  if (op.bias().defined()) require_on(op.bias(), x.device(), where, "the bias");
  auto plan = conv_plan(op, cache, x.shape(), nhwc, p, dev);
  if (plan->use_fp32) {
    p = Precision::FP32;
    plan = conv_plan(op, cache, x.shape(), nhwc, p, dev);
  }
  const auto weights = conv_weights(op, cache, dev, p, nhwc);
  const cudaStream_t st = stream(dev);
  const float* bias = op.bias().defined() ? op.bias().data<float>() : nullptr;
  const float* res = residual.defined() ? residual.data<float>() : nullptr;
  const i64 N = out_shape[0], O = out_shape[1], HW = out_shape[2] * out_shape[3];
  Scratch ws(dev, plan->workspace);
  Libraries& lib = libraries(dev);
  const float one = 1.0f, zero = 0.0f;

  if (p == Precision::FP32) {
    if (plan->fusable && plan->fused_ok.load(std::memory_order_relaxed)) {
      const float* b = bias ? bias : zero_bias(op, cache, dev);
      // Without a residual z is y itself, scaled by 0; y is zeroed first so that no stale NaN in
      // the fresh buffer can leak through 0 * NaN.
      if (!res) check(cudaMemsetAsync(y.raw(), 0, y.nbytes(), st), where);
      const float alpha2 = res ? 1.0f : 0.0f;
      cudnnStatus_t s;
      {
        std::lock_guard lock(lib.mu);
        s = cudnnConvolutionBiasActivationForward(lib.dnn, &one, plan->x, x.raw(), plan->w, weights->w.raw(),
                                                  plan->conv, plan->algo, ws.get(), plan->workspace, &alpha2,
                                                  plan->y, res ? res : y.raw(), plan->bias, b, plan->act,
                                                  plan->y, y.raw());
      }
      if (s == CUDNN_STATUS_SUCCESS) return y;
      if (s != CUDNN_STATUS_NOT_SUPPORTED && s != CUDNN_STATUS_BAD_PARAM) check_dnn(s, where);
      plan->fused_ok.store(false, std::memory_order_relaxed);  // the unfused path from now on
    }
    {
      std::lock_guard lock(lib.mu);
      check_dnn(
          cudnnConvolutionForward(lib.dnn, &one, plan->x, x.raw(), plan->w, weights->w.raw(), plan->conv,
                                  plan->algo, ws.get(), plan->workspace, &zero, plan->y, y.raw()),
          where);
    }
    if (bias || res)
      check(kern::conv_epilogue(y.raw(), kern::Elem::F32, bias, res, y.data<float>(), N, O, HW, nhwc, st),
            where);
    return y;
  }

  // BF16 / FP16: convert the input, convolve into a 16-bit buffer, widen + bias + residual in fp32.
  const kern::Elem e = elem_of(p);
  Scratch xs(dev, static_cast<std::size_t>(x.numel()) * 2);
  Scratch ys(dev, static_cast<std::size_t>(y.numel()) * 2);
  check(kern::cast_from_f32(x.data<float>(), xs.get(), e, x.numel(), false, st), where);
  {
    std::lock_guard lock(lib.mu);
    check_dnn(cudnnConvolutionForward(lib.dnn, &one, plan->x, xs.get(), plan->w, weights->w.raw(), plan->conv,
                                      plan->algo, ws.get(), plan->workspace, &zero, plan->y, ys.get()),
              where);
  }
  check(kern::conv_epilogue(ys.get(), e, bias, res, y.data<float>(), N, O, HW, nhwc, st), where);
  return y;
}

void conv2d_prepare(const ops::Conv2d& op, OpCache& cache, const ExecContext& ctx) {
  require_precision(ctx.precision, "Conv2d::prepare");
  require_on(op.weight(), ctx.device, "Conv2d::prepare", "the weight");
  const int dev = ctx.device.index;
  DeviceGuard guard(dev);
  (void)conv_weights(op, cache, dev, ctx.precision, true);  // activations run NHWC
  (void)libraries(dev);
}

// ---- linear -----------------------------------------------------------------------------------

namespace {

struct LinearWeights {
  Tensor w;  // [O, I] in the compute type
};

std::shared_ptr<LinearWeights> linear_weights(const ops::Linear& op, OpCache& cache, int dev, Precision p) {
  return cache.get_or_create<LinearWeights>(device_key(dev, "linear.w", p), [&] {
    auto lw = std::make_shared<LinearWeights>();
    if (p == Precision::FP32) {
      lw->w = op.weight();
      return lw;
    }
    lw->w = Tensor::empty(op.weight().shape(), dtype_of(p), Layout::Contiguous, Device::cuda(dev));
    // A [O, I] matrix is a 1x1 "convolution weight" [O, I, 1, 1]: same reorder kernel, no reordering.
    check(kern::reorder_weight(op.weight().data<float>(), lw->w.raw(), elem_of(p), op.out_features(),
                               op.in_features(), 1, false, stream(dev)),
          "Linear weights");
    return lw;
  });
}

}  // namespace

Tensor linear(const ops::Linear& op, OpCache& cache, const Tensor& x, bool silu_input,
              const ExecContext& ctx) {
  constexpr const char* where = "Linear";
  require_precision(ctx.precision, where);
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const i64 rows = x.shape()[0], I = op.in_features(), O = op.out_features();
  Tensor y = new_tensor(Shape{rows, O}, Layout::Contiguous, x, ctx);
  if (y.numel() == 0) return y;
  if (op.bias().defined()) require_on(op.bias(), x.device(), where, "the bias");
  if (rows > 65535) throw UnsupportedError(where, "the CUDA kernel takes up to 65535 rows");
  const auto weights = linear_weights(op, cache, dev, ctx.precision);
  check(kern::linear(x.data<float>(), weights->w.raw(), elem_of(ctx.precision),
                     op.bias().defined() ? op.bias().data<float>() : nullptr, y.data<float>(), rows, I, O,
                     silu_input, stream(dev)),
        where);
  return y;
}

void linear_prepare(const ops::Linear& op, OpCache& cache, const ExecContext& ctx) {
  require_precision(ctx.precision, "Linear::prepare");
  require_on(op.weight(), ctx.device, "Linear::prepare", "the weight");
  const int dev = ctx.device.index;
  DeviceGuard guard(dev);
  (void)linear_weights(op, cache, dev, ctx.precision);
}

}  // namespace diffprobe::cuda
