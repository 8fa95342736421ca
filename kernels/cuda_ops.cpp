// Host side of the hand-written CUDA ops: output allocation, scratch memory and kernel launches on
// the device's stream. The kernels are in elementwise.cu, group_norm.cu and attention.cu.
#include "cuda_ops.hpp"

#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda_common.hpp"
#include "kernels.cuh"

namespace diffprobe::cuda {
namespace {

using i64 = std::int64_t;

const float* cf(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }
float* mf(const Tensor& t) { return t.data<float>(); }

}  // namespace

Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const ops::GroupNormArgs& args,
                  const ExecContext& ctx) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const Shape& s = x.shape();
  const bool nhwc = x.layout() == Layout::NHWC;
  Tensor out = new_tensor(s, x.layout(), x, ctx);
  if (out.numel() == 0) return out;
  const i64 N = s[0], C = s[1], HW = s[2] * s[3];
  if (N > 65535 || C > 65535)
    throw UnsupportedError("group_norm", "the CUDA kernels take N and C up to 65535");
  Scratch ws(dev, kern::group_norm_workspace(N, C, HW, nhwc));
  const kern::GroupNormArgs a{cf(x), mf(out), cf(gamma), cf(beta),    cf(args.pre_bias), cf(args.scale_shift),
                              N,     C,       HW,        args.groups, args.eps,          args.silu,
                              nhwc};
  check(kern::group_norm(a, ws.get(), stream(dev)), "group_norm");
  return out;
}

Tensor attention(const Tensor& qkv, int heads, ops::QkvOrder order, const ExecContext& ctx) {
  const int dev = qkv.device().index;
  DeviceGuard guard(dev);
  const Shape& s = qkv.shape();
  const i64 N = s[0], C = s[1] / 3, T = s[2] * s[3], d = C / heads;
  if (d > kern::kMaxHeadDim)
    throw UnsupportedError("attention", "head size " + std::to_string(d) + " is above the CUDA kernel's " +
                                            std::to_string(kern::kMaxHeadDim));
  if (N > 65535 || heads > 65535)
    throw UnsupportedError("attention", "the CUDA kernel takes batches and head counts up to 65535");
  Tensor out = new_tensor(Shape{N, C, s[2], s[3]}, qkv.layout(), qkv, ctx);
  const kern::AttentionArgs a{
      cf(qkv), mf(out), N, C, T, heads, qkv.layout() == Layout::NHWC, order == ops::QkvOrder::Legacy};
  check(kern::attention(a, stream(dev)), "attention");
  return out;
}

Tensor silu(const Tensor& x, const ExecContext& ctx) {
  DeviceGuard guard(x.device().index);
  Tensor out = new_tensor(x.shape(), x.layout(), x, ctx);
  check(kern::silu(cf(x), mf(out), x.numel(), stream(x.device().index)), "silu");
  return out;
}

Tensor add(const Tensor& a, const Tensor& b, const ExecContext& ctx) {
  DeviceGuard guard(a.device().index);
  Tensor out = new_tensor(a.shape(), a.layout(), a, ctx);
  check(kern::add(cf(a), cf(b), mf(out), a.numel(), stream(a.device().index)), "add");
  return out;
}

Tensor avg_pool2x2(const Tensor& x, const ExecContext& ctx) {
  DeviceGuard guard(x.device().index);
  const Shape& s = x.shape();
  Tensor out = new_tensor(Shape{s[0], s[1], s[2] / 2, s[3] / 2}, x.layout(), x, ctx);
  check(kern::avg_pool2x2(cf(x), mf(out), s[0], s[1], s[2], s[3], x.layout() == Layout::NHWC,
                          stream(x.device().index)),
        "avg_pool2x2");
  return out;
}

Tensor upsample_nearest2x(const Tensor& x, const ExecContext& ctx) {
  DeviceGuard guard(x.device().index);
  const Shape& s = x.shape();
  Tensor out = new_tensor(Shape{s[0], s[1], 2 * s[2], 2 * s[3]}, x.layout(), x, ctx);
  check(kern::upsample_nearest2x(cf(x), mf(out), s[0], s[1], s[2], s[3], x.layout() == Layout::NHWC,
                                 stream(x.device().index)),
        "upsample_nearest2x");
  return out;
}

Tensor concat_channels(const Tensor& a, const Tensor& b, const ExecContext& ctx) {
  const int dev = a.device().index;
  DeviceGuard guard(dev);
  const Shape& s = a.shape();
  const i64 N = s[0], Ca = s[1], Cb = b.shape()[1], HW = s[2] * s[3];
  Tensor out = new_tensor(Shape{N, Ca + Cb, s[2], s[3]}, a.layout(), a, ctx);
  if (out.numel() == 0) return out;
  if (a.layout() == Layout::NHWC) {
    check(kern::concat_channels_nhwc(cf(a), cf(b), mf(out), N * HW, Ca, Cb, stream(dev)), "concat_channels");
  } else {
    // NCHW: each sample is [a's planes | b's planes], two strided block copies.
    const std::size_t fs = sizeof(float), pitch = static_cast<std::size_t>((Ca + Cb) * HW) * fs;
    const std::size_t wa = static_cast<std::size_t>(Ca * HW) * fs,
                      wb = static_cast<std::size_t>(Cb * HW) * fs;
    char* y = static_cast<char*>(out.raw());
    if (wa > 0)
      check(cudaMemcpy2DAsync(y, pitch, a.raw(), wa, wa, static_cast<std::size_t>(N),
                              cudaMemcpyDeviceToDevice, stream(dev)),
            "concat_channels");
    if (wb > 0)
      check(cudaMemcpy2DAsync(y + wa, pitch, b.raw(), wb, wb, static_cast<std::size_t>(N),
                              cudaMemcpyDeviceToDevice, stream(dev)),
            "concat_channels");
  }
  return out;
}

Tensor adaptive_pool2d(const Tensor& x, int out_h, int out_w, bool max, const ExecContext& ctx) {
  DeviceGuard guard(x.device().index);
  const Shape& s = x.shape();
  Tensor out = new_tensor(Shape{s[0], s[1], out_h, out_w}, x.layout(), x, ctx);
  check(kern::adaptive_pool2d(cf(x), mf(out), s[0], s[1], s[2], s[3], out_h, out_w,
                              x.layout() == Layout::NHWC, max, stream(x.device().index)),
        max ? "adaptive_max_pool2d" : "adaptive_avg_pool2d");
  return out;
}

Tensor timestep_embedding(const Tensor& t, int dim, const ExecContext& ctx) {
  const int dev = t.device().index;
  DeviceGuard guard(dev);
  const i64 N = t.shape()[0], half = dim / 2;
  Tensor out = new_tensor(Shape{N, dim}, Layout::Contiguous, t, ctx);
  if (out.numel() == 0) return out;
  // The frequency table, computed on the host exactly as the CPU backend does (fp32 steps), so
  // both backends agree to the last bit on it; uploaded once per (device, dim).
  static std::mutex mu;
  static auto* tables = new std::map<std::pair<int, int>, Tensor>();  // never destroyed, like the pools
  Tensor freq;
  {
    std::lock_guard lock(mu);
    Tensor& slot = (*tables)[{dev, dim}];
    if (!slot.defined() && half > 0) {
      std::vector<float> f(static_cast<std::size_t>(half));
      const float neg_log = static_cast<float>(-std::log(10000.0));
      for (i64 i = 0; i < half; ++i)
        f[static_cast<std::size_t>(i)] = std::exp(neg_log * static_cast<float>(i) / static_cast<float>(half));
      slot = Tensor::from_vector(Shape{half}, f).to_device(t.device());
    }
    freq = slot;
  }
  check(kern::timestep_embedding(cf(t), half > 0 ? cf(freq) : nullptr, mf(out), N, dim, stream(dev)),
        "timestep_embedding");
  return out;
}

}  // namespace diffprobe::cuda
