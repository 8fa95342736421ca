// The U-Net's small ops on the GPU, plus the conversions the convolution and linear layers need.
// All are memory-bound one-pass kernels: one thread per output element over a grid-stride loop,
// with the element's logical (n, c, h, w) decoded from its position in the output's layout so that
// consecutive threads touch consecutive addresses. Results match the CPU backend's: the same
// summation order for the 2x2 pool, double accumulation for the adaptive average pool.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "kernels.cuh"

namespace diffprobe::cuda::kern {
namespace {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU, few enough that each thread does a handful of elements.
unsigned blocks_for(i64 n) {
  const i64 b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

#define DP_GRID_STRIDE(i, n)                                                     \
  for (i64 i = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<i64>(gridDim.x) * blockDim.x)

__device__ __forceinline__ float silu_f(float v) { return v / (1.0f + expf(-v)); }

__global__ void silu_kernel(const float* __restrict__ x, float* __restrict__ y, i64 n) {
  DP_GRID_STRIDE(i, n) y[i] = silu_f(x[i]);
}

__global__ void add_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                           i64 n) {
  DP_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float load_as_f32(const void* p, Elem t, i64 i) {
  switch (t) {
    case Elem::F16: return __half2float(static_cast<const __half*>(p)[i]);
    case Elem::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

template <class T>
__global__ void cast_kernel(const float* __restrict__ x, T* __restrict__ y, i64 n, bool silu_first) {
  DP_GRID_STRIDE(i, n) {
    const float v = x[i];
    y[i] = from_f32<T>(silu_first ? silu_f(v) : v);
  }
}

__global__ void avg_pool_kernel(const float* __restrict__ x, float* __restrict__ y, i64 N, i64 C, i64 H,
                                i64 W, bool nhwc) {
  const i64 OH = H / 2, OW = W / 2, total = N * C * OH * OW;
  DP_GRID_STRIDE(i, total) {
    const float* a;
    i64 dx, dy;  // offsets of the right and lower neighbours
    if (nhwc) {
      const i64 c = i % C, ow = (i / C) % OW, oh = (i / (C * OW)) % OH, n = i / (C * OW * OH);
      a = x + ((n * H + 2 * oh) * W + 2 * ow) * C + c;
      dx = C;
      dy = W * C;
    } else {
      const i64 ow = i % OW, oh = (i / OW) % OH, plane = i / (OW * OH);
      a = x + (plane * H + 2 * oh) * W + 2 * ow;
      dx = 1;
      dy = W;
    }
    // The CPU backend's order: ((a0 + a1) + (b0 + b1)) * 0.25.
    y[i] = ((a[0] + a[dx]) + (a[dy] + a[dy + dx])) * 0.25f;
  }
}

__global__ void upsample_kernel(const float* __restrict__ x, float* __restrict__ y, i64 N, i64 C, i64 H,
                                i64 W, bool nhwc) {
  const i64 OH = 2 * H, OW = 2 * W, total = N * C * OH * OW;
  DP_GRID_STRIDE(i, total) {
    if (nhwc) {
      const i64 c = i % C, ow = (i / C) % OW, oh = (i / (C * OW)) % OH, n = i / (C * OW * OH);
      y[i] = x[((n * H + oh / 2) * W + ow / 2) * C + c];
    } else {
      const i64 ow = i % OW, oh = (i / OW) % OH, plane = i / (OW * OH);
      y[i] = x[(plane * H + oh / 2) * W + ow / 2];
    }
  }
}

__global__ void concat_nhwc_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, i64 pixels, i64 Ca, i64 Cb) {
  const i64 C = Ca + Cb, total = pixels * C;
  DP_GRID_STRIDE(i, total) {
    const i64 p = i / C, c = i % C;
    y[i] = c < Ca ? a[p * Ca + c] : b[p * Cb + (c - Ca)];
  }
}

__global__ void adaptive_pool_kernel(const float* __restrict__ x, float* __restrict__ y, i64 N, i64 C, i64 H,
                                     i64 W, i64 OH, i64 OW, bool nhwc, bool max) {
  const i64 total = N * C * OH * OW;
  DP_GRID_STRIDE(i, total) {
    i64 n, c, oh, ow;
    if (nhwc) {
      c = i % C;
      ow = (i / C) % OW;
      oh = (i / (C * OW)) % OH;
      n = i / (C * OW * OH);
    } else {
      ow = i % OW;
      oh = (i / OW) % OH;
      c = (i / (OW * OH)) % C;
      n = i / (OW * OH * C);
    }
    // PyTorch's windows: [floor(i * in / out), ceil((i + 1) * in / out)).
    const i64 h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
    const i64 w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
    const i64 ph = nhwc ? W * C : W, pw = nhwc ? C : 1;
    const float* base = nhwc ? x + n * H * W * C + c : x + (n * C + c) * H * W;
    if (max) {
      float m = base[h0 * ph + w0 * pw];
      for (i64 h = h0; h < h1; ++h)
        for (i64 w = w0; w < w1; ++w) {
          const float v = base[h * ph + w * pw];
          if (v > m || isnan(v)) m = v;  // NaN wins, as in PyTorch
        }
      y[i] = m;
    } else {
      double sum = 0.0;
      for (i64 h = h0; h < h1; ++h)
        for (i64 w = w0; w < w1; ++w) sum += base[h * ph + w * pw];
      y[i] = static_cast<float>(sum / static_cast<double>((h1 - h0) * (w1 - w0)));
    }
  }
}

__global__ void timestep_kernel(const float* __restrict__ t, const float* __restrict__ freq,
                                float* __restrict__ y, i64 N, i64 dim) {
  const i64 half = dim / 2, cols = half + (dim % 2), total = N * cols;
  DP_GRID_STRIDE(i, total) {
    const i64 n = i / cols, k = i % cols;
    float* row = y + n * dim;
    if (k == half) {
      row[dim - 1] = 0.0f;  // odd dim: the appended zero column
    } else {
      // fp32 product as in ADM's code, then cos / sin in double (as the CPU backend).
      const double arg = static_cast<double>(t[n] * freq[k]);
      row[k] = static_cast<float>(cos(arg));
      row[half + k] = static_cast<float>(sin(arg));
    }
  }
}

template <class T> __global__ void reorder_weight_kernel(const float* __restrict__ w, T* __restrict__ dst,
                                                         i64 O, i64 I, i64 k, bool nhwc) {
  const i64 total = O * I * k * k;
  DP_GRID_STRIDE(i, total) {
    i64 src = i;
    if (nhwc) {  // i indexes [O, kh, kw, I]
      const i64 ci = i % I, kw = (i / I) % k, kh = (i / (I * k)) % k, o = i / (I * k * k);
      src = ((o * I + ci) * k + kh) * k + kw;
    }
    dst[i] = from_f32<T>(w[src]);
  }
}

// Index type I: 32-bit when the tensor allows (64-bit division takes many instructions).
template <class I> __device__ __forceinline__ void conv_epilogue_body(const void* conv, Elem conv_type,
                                                                      const float* __restrict__ bias,
                                                                      const float* __restrict__ residual,
                                                                      float* y, I total, I C, I HW,
                                                                      bool nhwc) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    float v = load_as_f32(conv, conv_type, i);
    if (bias) v += bias[nhwc ? i % C : (i / HW) % C];
    if (residual) v += residual[i];
    y[i] = v;
  }
}

__global__ void conv_epilogue_kernel(const void* conv, Elem conv_type, const float* __restrict__ bias,
                                     const float* __restrict__ residual, float* y, i64 total, i64 C, i64 HW,
                                     bool nhwc) {
  if (total < (i64{1} << 31))
    conv_epilogue_body<unsigned>(conv, conv_type, bias, residual, y, static_cast<unsigned>(total),
                                 static_cast<unsigned>(C), static_cast<unsigned>(HW), nhwc);
  else
    conv_epilogue_body<i64>(conv, conv_type, bias, residual, y, total, C, HW, nhwc);
}

// One warp per output (row, o): lanes stride over the inputs (coalesced rows of x and W), then a
// fixed xor-shuffle tree sums the lanes. The GEMMs of the U-Net (embedding MLPs) have a handful of
// rows, so this is memory-bound on W and needs no tiling.
constexpr int kLinearWarps = 8;

template <class W> __global__ void __launch_bounds__(kLinearWarps * 32)
    linear_kernel(const float* __restrict__ x, const W* __restrict__ w, const float* __restrict__ bias,
                  float* __restrict__ y, i64 I, i64 O, bool silu_input) {
  const int lane = threadIdx.x % 32;
  const i64 o = static_cast<i64>(blockIdx.x) * kLinearWarps + threadIdx.x / 32, row = blockIdx.y;
  if (o >= O) return;  // whole warps leave together
  const float* xr = x + row * I;
  const W* wr = w + o * I;
  float acc = 0.0f;
  for (i64 i = lane; i < I; i += 32) {
    float v = xr[i];
    if (silu_input) v = silu_f(v);
    v = to_f32(from_f32<W>(v));  // the 16-bit GEMM's input rounding (identity for float)
    acc = fmaf(v, to_f32(wr[i]), acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) y[row * O + o] = acc + (bias ? bias[o] : 0.0f);
}

}  // namespace

cudaError_t silu(const float* x, float* y, i64 n, cudaStream_t s) {
  if (n > 0) silu_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t add(const float* a, const float* b, float* y, i64 n, cudaStream_t s) {
  if (n > 0) add_kernel<<<blocks_for(n), kThreads, 0, s>>>(a, b, y, n);
  return cudaGetLastError();
}

cudaError_t cast_from_f32(const float* x, void* y, Elem to, i64 n, bool silu_first, cudaStream_t s) {
  if (n <= 0) return cudaGetLastError();
  switch (to) {
    case Elem::F16:
      cast_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, static_cast<__half*>(y), n, silu_first);
      break;
    case Elem::BF16:
      cast_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, static_cast<__nv_bfloat16*>(y), n, silu_first);
      break;
    case Elem::F32:
      cast_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, static_cast<float*>(y), n, silu_first);
      break;
  }
  return cudaGetLastError();
}

cudaError_t avg_pool2x2(const float* x, float* y, i64 N, i64 C, i64 H, i64 W, bool nhwc, cudaStream_t s) {
  const i64 n = N * C * (H / 2) * (W / 2);
  if (n > 0) avg_pool_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, N, C, H, W, nhwc);
  return cudaGetLastError();
}

cudaError_t upsample_nearest2x(const float* x, float* y, i64 N, i64 C, i64 H, i64 W, bool nhwc,
                               cudaStream_t s) {
  const i64 n = N * C * H * W * 4;
  if (n > 0) upsample_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, N, C, H, W, nhwc);
  return cudaGetLastError();
}

cudaError_t concat_channels_nhwc(const float* a, const float* b, float* y, i64 pixels, i64 Ca, i64 Cb,
                                 cudaStream_t s) {
  const i64 n = pixels * (Ca + Cb);
  if (n > 0) concat_nhwc_kernel<<<blocks_for(n), kThreads, 0, s>>>(a, b, y, pixels, Ca, Cb);
  return cudaGetLastError();
}

cudaError_t adaptive_pool2d(const float* x, float* y, i64 N, i64 C, i64 H, i64 W, i64 OH, i64 OW, bool nhwc,
                            bool max, cudaStream_t s) {
  const i64 n = N * C * OH * OW;
  if (n > 0) adaptive_pool_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, N, C, H, W, OH, OW, nhwc, max);
  return cudaGetLastError();
}

cudaError_t timestep_embedding(const float* t, const float* freq, float* y, i64 N, i64 dim, cudaStream_t s) {
  const i64 n = N * (dim / 2 + dim % 2);
  if (n > 0) timestep_kernel<<<blocks_for(n), kThreads, 0, s>>>(t, freq, y, N, dim);
  return cudaGetLastError();
}

cudaError_t reorder_weight(const float* w, void* dst, Elem to, i64 O, i64 I, i64 k, bool nhwc,
                           cudaStream_t s) {
  const i64 n = O * I * k * k;
  if (n <= 0) return cudaGetLastError();
  const unsigned g = blocks_for(n);
  switch (to) {
    case Elem::F16:
      reorder_weight_kernel<<<g, kThreads, 0, s>>>(w, static_cast<__half*>(dst), O, I, k, nhwc);
      break;
    case Elem::BF16:
      reorder_weight_kernel<<<g, kThreads, 0, s>>>(w, static_cast<__nv_bfloat16*>(dst), O, I, k, nhwc);
      break;
    case Elem::F32:
      reorder_weight_kernel<<<g, kThreads, 0, s>>>(w, static_cast<float*>(dst), O, I, k, nhwc);
      break;
  }
  return cudaGetLastError();
}

cudaError_t conv_epilogue(const void* conv, Elem conv_type, const float* bias, const float* residual,
                          float* y, i64 N, i64 C, i64 HW, bool nhwc, cudaStream_t s) {
  const i64 n = N * C * HW;
  if (n > 0)
    conv_epilogue_kernel<<<blocks_for(n), kThreads, 0, s>>>(conv, conv_type, bias, residual, y, n, C, HW,
                                                            nhwc);
  return cudaGetLastError();
}

cudaError_t linear(const float* x, const void* w, Elem w_type, const float* bias, float* y, i64 rows, i64 I,
                   i64 O, bool silu_input, cudaStream_t s) {
  if (rows <= 0 || O <= 0) return cudaGetLastError();
  if (rows > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((O + kLinearWarps - 1) / kLinearWarps), static_cast<unsigned>(rows));
  const unsigned threads = kLinearWarps * 32;
  switch (w_type) {
    case Elem::F16:
      linear_kernel<<<grid, threads, 0, s>>>(x, static_cast<const __half*>(w), bias, y, I, O, silu_input);
      break;
    case Elem::BF16:
      linear_kernel<<<grid, threads, 0, s>>>(x, static_cast<const __nv_bfloat16*>(w), bias, y, I, O,
                                             silu_input);
      break;
    case Elem::F32:
      linear_kernel<<<grid, threads, 0, s>>>(x, static_cast<const float*>(w), bias, y, I, O, silu_input);
      break;
  }
  return cudaGetLastError();
}

}  // namespace diffprobe::cuda::kern
