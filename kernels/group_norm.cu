// Fused GroupNorm (+ pre-bias, scale-shift, SiLU) on the GPU, NHWC and NCHW.
//
// Three kernels, all reducing in an order fixed by the shape alone (no atomics), so the output is
// bitwise the same from run to run:
//   1. partial statistics: Welford (count, mean, M2) in fp32 per (sample, channel, pixel chunk);
//      NHWC blocks cover 32 adjacent channels x a chunk of pixels (coalesced rows), NCHW blocks one
//      channel plane chunk;
//   2. finalize, one thread per (sample, group): merges the chunks of each channel, shifts the
//      channel mean by pre_bias (a per-channel constant leaves M2 unchanged), merges the channels
//      (Chan's formula), and folds mean, rstd, gamma, beta, (1 + scale) and shift into a
//      per-(sample, channel) affine y = (x - m) * a + b;
//   3. apply: one multiply-add (and SiLU) per element.
#include <algorithm>

#include "kernels.cuh"

namespace diffprobe::cuda::kern {
namespace {

struct Stat {
  float n, mean, m2;
};

__device__ __forceinline__ void merge(Stat& a, const Stat& b) {
  if (b.n == 0.0f) return;
  if (a.n == 0.0f) {
    a = b;
    return;
  }
  const float n = a.n + b.n, d = b.mean - a.mean, fb = b.n / n;
  a.mean += d * fb;
  a.m2 += b.m2 + d * d * a.n * fb;
  a.n = n;
}

__device__ __forceinline__ void push(Stat& s, float x) {
  s.n += 1.0f;
  const float d = x - s.mean;
  s.mean += d / s.n;
  s.m2 += d * (x - s.mean);
}

constexpr int kNhwcChannels = 32;  // channels per NHWC block (one warp row)
constexpr int kNhwcRows = 8;       // pixel rows per NHWC block
constexpr i64 kNhwcChunk = 128;    // pixels per NHWC chunk
constexpr int kNchwThreads = 256;
constexpr i64 kNchwChunk = 2048;  // elements of a plane per NCHW chunk

i64 nhwc_chunks(i64 HW) { return (HW + kNhwcChunk - 1) / kNhwcChunk; }
i64 nchw_chunks(i64 HW) { return (HW + kNchwChunk - 1) / kNchwChunk; }

// part[(n * C + c) * chunks + k]
__global__ void __launch_bounds__(kNhwcChannels* kNhwcRows)
    partial_nhwc(const float* __restrict__ x, Stat* __restrict__ part, i64 C, i64 HW, i64 chunks) {
  __shared__ Stat sh[kNhwcRows][kNhwcChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const i64 c = static_cast<i64>(blockIdx.x) * kNhwcChannels + tx, k = blockIdx.y, n = blockIdx.z;
  const i64 p0 = k * kNhwcChunk, p1 = min(HW, p0 + kNhwcChunk);
  Stat s{0.0f, 0.0f, 0.0f};
  if (c < C) {
    const float* xs = x + n * HW * C + c;
    for (i64 p = p0 + ty; p < p1; p += kNhwcRows) push(s, xs[p * C]);
  }
  sh[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int r = 1; r < kNhwcRows; ++r) merge(s, sh[r][tx]);
    part[(n * C + c) * chunks + k] = s;
  }
}

__global__ void __launch_bounds__(kNchwThreads)
    partial_nchw(const float* __restrict__ x, Stat* __restrict__ part, i64 C, i64 HW, i64 chunks) {
  __shared__ Stat sh[kNchwThreads];
  const int tid = threadIdx.x;
  const i64 k = blockIdx.x, c = blockIdx.y, n = blockIdx.z;
  const i64 p0 = k * kNchwChunk, p1 = min(HW, p0 + kNchwChunk);
  const float* xs = x + (n * C + c) * HW;
  Stat s{0.0f, 0.0f, 0.0f};
  for (i64 p = p0 + tid; p < p1; p += kNchwThreads) push(s, xs[p]);
  sh[tid] = s;
  __syncthreads();
  for (int stride = kNchwThreads / 2; stride > 0; stride /= 2) {  // fixed pairing: deterministic
    if (tid < stride) merge(sh[tid], sh[tid + stride]);
    __syncthreads();
  }
  if (tid == 0) part[(n * C + c) * chunks + k] = sh[0];
}

__global__ void finalize(const Stat* __restrict__ part, float* __restrict__ coef,
                         const float* __restrict__ gamma, const float* __restrict__ beta,
                         const float* __restrict__ pre_bias, const float* __restrict__ scale_shift, i64 N,
                         i64 C, int groups, i64 chunks, float eps) {
  const i64 id = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x;
  if (id >= N * groups) return;
  const i64 n = id / groups, g = id % groups, cg = C / groups;
  Stat grp{0.0f, 0.0f, 0.0f};
  for (i64 j = 0; j < cg; ++j) {
    const i64 c = g * cg + j;
    Stat ch{0.0f, 0.0f, 0.0f};
    for (i64 k = 0; k < chunks; ++k) merge(ch, part[(n * C + c) * chunks + k]);
    if (pre_bias) ch.mean += pre_bias[n * C + c];
    merge(grp, ch);
  }
  const float var = grp.n > 0.0f ? fmaxf(grp.m2 / grp.n, 0.0f) : 0.0f;
  const float rstd = 1.0f / sqrtf(var + eps);
  for (i64 j = 0; j < cg; ++j) {
    const i64 c = g * cg + j;
    const float pb = pre_bias ? pre_bias[n * C + c] : 0.0f;
    const float sc = scale_shift ? 1.0f + scale_shift[n * 2 * C + c] : 1.0f;
    const float sf = scale_shift ? scale_shift[n * 2 * C + C + c] : 0.0f;
    float* o = coef + (n * C + c) * 3;
    o[0] = grp.mean - pb;  // x - (mean - pre_bias) == (x + pre_bias) - mean
    o[1] = rstd * gamma[c] * sc;
    o[2] = beta[c] * sc + sf;
  }
}

// Index type I: 32-bit when the tensor allows (64-bit division takes many instructions, and this
// memory-bound pass would become compute-bound on it).
template <class I> __device__ __forceinline__ void apply_body(const float* __restrict__ x,
                                                              float* __restrict__ y,
                                                              const float* __restrict__ coef, I total, I C,
                                                              I HW, bool nhwc, bool silu) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const I c = nhwc ? i % C : (i / HW) % C, n = i / (C * HW);
    const float* k = coef + (static_cast<i64>(n) * C + c) * 3;
    float v = (x[i] - k[0]) * k[1] + k[2];
    if (silu) v = v / (1.0f + expf(-v));
    y[i] = v;
  }
}

__global__ void apply(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ coef,
                      i64 total, i64 C, i64 HW, bool nhwc, bool silu) {
  if (total < (i64{1} << 31))
    apply_body<unsigned>(x, y, coef, static_cast<unsigned>(total), static_cast<unsigned>(C),
                         static_cast<unsigned>(HW), nhwc, silu);
  else
    apply_body<i64>(x, y, coef, total, C, HW, nhwc, silu);
}

}  // namespace

std::size_t group_norm_workspace(i64 N, i64 C, i64 HW, bool nhwc) {
  const i64 chunks = nhwc ? nhwc_chunks(HW) : nchw_chunks(HW);
  return static_cast<std::size_t>(N * C * chunks) * sizeof(Stat) +
         static_cast<std::size_t>(N * C * 3) * sizeof(float);
}

cudaError_t group_norm(const GroupNormArgs& a, void* workspace, cudaStream_t s) {
  const i64 total = a.N * a.C * a.HW;
  if (total == 0) return cudaGetLastError();
  const i64 chunks = a.nhwc ? nhwc_chunks(a.HW) : nchw_chunks(a.HW);
  auto* part = static_cast<Stat*>(workspace);
  auto* coef = reinterpret_cast<float*>(part + a.N * a.C * chunks);
  if (a.nhwc) {
    const dim3 grid(static_cast<unsigned>((a.C + kNhwcChannels - 1) / kNhwcChannels),
                    static_cast<unsigned>(chunks), static_cast<unsigned>(a.N));
    partial_nhwc<<<grid, dim3(kNhwcChannels, kNhwcRows), 0, s>>>(a.x, part, a.C, a.HW, chunks);
  } else {
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(a.C), static_cast<unsigned>(a.N));
    partial_nchw<<<grid, kNchwThreads, 0, s>>>(a.x, part, a.C, a.HW, chunks);
  }
  const i64 ng = a.N * a.groups;
  finalize<<<static_cast<unsigned>((ng + 127) / 128), 128, 0, s>>>(
      part, coef, a.gamma, a.beta, a.pre_bias, a.scale_shift, a.N, a.C, a.groups, chunks, a.eps);
  const i64 blocks = std::min<i64>((total + 255) / 256, 65535 * 8);
  apply<<<static_cast<unsigned>(blocks), 256, 0, s>>>(a.x, a.y, coef, total, a.C, a.HW, a.nhwc, a.silu);
  return cudaGetLastError();
}

}  // namespace diffprobe::cuda::kern
