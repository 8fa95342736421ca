// Multi-head self-attention over image tokens in the flash style: no T x T matrix in memory.
//
// A block of 128 threads serves a tile of queries of one (sample, head). Each query is held by
// TPQ = D / 32 adjacent threads, thread s of the group owning dims s, s + TPQ, s + 2 TPQ, ...
// (32 of them), so q and the output accumulator live in registers. Keys and values stream through
// shared memory in tiles of BN tokens, read straight from the qkv tensor in either layout and
// channel order (the loader walks the contiguous direction: channels for NHWC, tokens for NCHW).
// For each tile: the scores of the group's query against the BN keys (partial dot products summed
// across the TPQ threads by xor-shuffles, a fixed order), the tile maximum, one rescale of the
// running sum and accumulator (online softmax, fp32), then the value accumulation. Threads of a
// warp read the same key row (broadcast) at TPQ consecutive addresses, and rows are padded by one
// float so the NCHW loader's column writes do not collide on a bank.
#include <cmath>

#include "kernels.cuh"

namespace diffprobe::cuda::kern {
namespace {

constexpr int kThreads = 128;

struct Params {
  const float* qkv;
  float* out;
  i64 T, C;
  int d;
  bool nhwc, legacy;
  float scale;
};

template <int D, int BN> __global__ void __launch_bounds__(kThreads) flash_kernel(Params p) {
  constexpr int TPQ = D / 32;          // threads per query
  constexpr int QPB = kThreads / TPQ;  // queries per block
  constexpr int LOADS = BN * D / kThreads;
  __shared__ float Ks[BN][D + 1];
  __shared__ float Vs[BN][D + 1];

  const int tid = threadIdx.x, s = tid % TPQ;
  const i64 T = p.T, C = p.C, n = blockIdx.z;
  const int h = blockIdx.y, d = p.d;
  const i64 t = static_cast<i64>(blockIdx.x) * QPB + tid / TPQ;
  const bool valid = t < T;

  // Strides of the token and channel directions, and where this sample starts.
  const i64 in_tok = p.nhwc ? 3 * C : 1, in_ch = p.nhwc ? 1 : T;
  const i64 out_tok = p.nhwc ? C : 1, out_ch = p.nhwc ? 1 : T;
  const float* in = p.qkv + n * 3 * C * T;
  float* out = p.out + n * C * T;
  const i64 q_ch = p.legacy ? static_cast<i64>(h) * 3 * d : static_cast<i64>(h) * d;
  const i64 k_ch = p.legacy ? q_ch + d : C + q_ch;
  const i64 v_ch = p.legacy ? q_ch + 2 * d : 2 * C + q_ch;

  float q[32], acc[32];
  {
    const i64 tq = valid ? t : T - 1;  // idle threads still take part in the shuffles
#pragma unroll
    for (int k = 0; k < 32; ++k) {
      const int dim = s + TPQ * k;
      q[k] = dim < d ? in[tq * in_tok + (q_ch + dim) * in_ch] : 0.0f;
      acc[k] = 0.0f;
    }
  }
  float m = -INFINITY, l = 0.0f;

  for (i64 j0 = 0; j0 < T; j0 += BN) {
    __syncthreads();  // the previous tile is consumed
#pragma unroll 4
    for (int r = 0; r < LOADS; ++r) {
      const int e = r * kThreads + tid;
      const int j = p.nhwc ? e / D : e % BN, i = p.nhwc ? e % D : e / BN;
      const i64 tok = j0 + j;
      float kv = 0.0f, vv = 0.0f;
      if (tok < T && i < d) {
        kv = in[tok * in_tok + (k_ch + i) * in_ch];
        vv = in[tok * in_tok + (v_ch + i) * in_ch];
      }
      Ks[j][i] = kv;
      Vs[j][i] = vv;
    }
    __syncthreads();

    float sc[BN];
    float mt = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < BN; ++jj) {
      float dot = 0.0f;
#pragma unroll
      for (int k = 0; k < 32; ++k) dot = fmaf(q[k], Ks[jj][s + TPQ * k], dot);
#pragma unroll
      for (int off = TPQ / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      sc[jj] = j0 + jj < T ? dot : -INFINITY;
      mt = fmaxf(mt, sc[jj]);
    }
    // Softmax of (q.k) / sqrt(d): exp((s - max) * scale), as the CPU backend computes it.
    const float m_new = fmaxf(m, mt);
    const float corr = expf((m - m_new) * p.scale);
    l *= corr;
#pragma unroll
    for (int k = 0; k < 32; ++k) acc[k] *= corr;
#pragma unroll
    for (int jj = 0; jj < BN; ++jj) {
      const float pj = expf((sc[jj] - m_new) * p.scale);
      l += pj;
#pragma unroll
      for (int k = 0; k < 32; ++k) acc[k] = fmaf(pj, Vs[jj][s + TPQ * k], acc[k]);
    }
    m = m_new;
  }

  if (valid) {
    const float inv = 1.0f / l;
    const i64 o_ch = static_cast<i64>(h) * d;
#pragma unroll
    for (int k = 0; k < 32; ++k) {
      const int dim = s + TPQ * k;
      if (dim < d) out[t * out_tok + (o_ch + dim) * out_ch] = acc[k] * inv;
    }
  }
}

template <int D, int BN> void launch(const Params& p, i64 N, int heads, cudaStream_t s) {
  constexpr int QPB = kThreads / (D / 32);
  const dim3 grid(static_cast<unsigned>((p.T + QPB - 1) / QPB), static_cast<unsigned>(heads),
                  static_cast<unsigned>(N));
  flash_kernel<D, BN><<<grid, kThreads, 0, s>>>(p);
}

}  // namespace

cudaError_t attention(const AttentionArgs& a, cudaStream_t s) {
  if (a.N == 0 || a.T == 0 || a.C == 0) return cudaGetLastError();
  const i64 d = a.C / a.heads;
  if (d < 1 || d > kMaxHeadDim || a.N > 65535 || a.heads > 65535) return cudaErrorInvalidValue;
  Params p{a.qkv,
           a.out,
           a.T,
           a.C,
           static_cast<int>(d),
           a.nhwc,
           a.legacy,
           static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
  if (d <= 32)
    launch<32, 32>(p, a.N, a.heads, s);
  else if (d <= 64)
    launch<64, 32>(p, a.N, a.heads, s);
  else if (d <= 128)
    launch<128, 32>(p, a.N, a.heads, s);
  else
    launch<256, 16>(p, a.N, a.heads, s);
  return cudaGetLastError();
}

}  // namespace diffprobe::cuda::kern
