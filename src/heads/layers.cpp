#include "heads/layers.hpp"

#include <oneapi/dnnl/dnnl.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numbers>

#include "diffprobe/core/error.hpp"

namespace diffprobe::heads {
namespace {

template <class T> using MatR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T> using MapM = Eigen::Map<MatR<T>>;
template <class T> using CMapM = Eigen::Map<const MatR<T>>;
template <class T> using SMapM = Eigen::Map<MatR<T>, 0, Eigen::OuterStride<>>;
template <class T> using CSMapM = Eigen::Map<const MatR<T>, 0, Eigen::OuterStride<>>;
template <class T> using RowV = Eigen::Matrix<T, 1, Eigen::Dynamic>;

// Below this many elements, an OpenMP team costs more than it saves (more so on a busy machine).
constexpr std::int64_t kParallelMin = 1 << 16;

// Row-major C = alpha * op(A) * op(B) + beta * C. float goes to oneDNN's sgemm (JIT, AVX-512/AVX2
// chosen at run time, OpenMP threads), which is several times faster than Eigen built for the
// baseline ISA; double (the gradient checks) stays on Eigen.
void gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  const dnnl_status_t st =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (st != dnnl_success)
    throw UnsupportedError("heads::gemm",
                           "oneDNN sgemm failed (status " + std::to_string(static_cast<int>(st)) + ")");
}

void gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
          std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  using S = Eigen::OuterStride<>;
  using CM = Eigen::Map<const MatR<double>, 0, S>;
  Eigen::Map<MatR<double>, 0, S> C(c, m, n, S(ldc));
  const CM A(a, ta ? k : m, ta ? m : k, S(lda)), B(b, tb ? n : k, tb ? k : n, S(ldb));
  MatR<double> prod;
  if (ta && tb)
    prod = A.transpose() * B.transpose();
  else if (ta)
    prod = A.transpose() * B;
  else if (tb)
    prod = A * B.transpose();
  else
    prod = A * B;
  C = beta == 0 ? (alpha * prod).eval() : (beta * C + alpha * prod).eval();
}

[[noreturn]] void no_cache(const char* where) {
  throw ArgumentError(where, "backward() called without a preceding forward(x, training=true)");
}

void expect_grad_shape(const char* where, const std::vector<std::int64_t>& got,
                       const std::vector<std::int64_t>& want) {
  if (got != want)
    throw ShapeError(where,
                     "gradient of shape " + shape_str(got) + " for an output of shape " + shape_str(want));
}

void expect_rank(const char* where, const std::vector<std::int64_t>& shape, int rank, const char* layout) {
  if (static_cast<int>(shape.size()) != rank)
    throw ShapeError(where, std::string("expects ") + layout + ", got " + shape_str(shape));
}

template <class T> void add_into(Buf<T>& a, const Buf<T>& b) {
  const std::int64_t n = a.numel();
  T* pa = a.data();
  const T* pb = b.data();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) pa[i] += pb[i];
}

}  // namespace

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string join_name(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  if (name.empty()) return prefix;
  return prefix + "." + name;
}

template <class T> void Param<T>::reset(Rng& rng) {
  for (auto& v : value) {
    switch (init) {
      case Init::Zeros: v = T(0); break;
      case Init::Ones: v = T(1); break;
      case Init::Uniform: v = static_cast<T>(rng.uniform(-bound, bound)); break;
    }
  }
  std::fill(grad.begin(), grad.end(), T(0));
}

// ---- Linear --------------------------------------------------------------------------------

template <class T> DenseLayer<T>::DenseLayer(std::int64_t in, std::int64_t out, bool with_bias)
    : weight({out, in}, Init::Uniform, 1.0 / std::sqrt(static_cast<double>(in))),
      bias(with_bias ? Param<T>({out}, Init::Uniform, 1.0 / std::sqrt(static_cast<double>(in))) : Param<T>()),
      in_(in),
      out_(out),
      has_bias_(with_bias) {}

template <class T> Buf<T> DenseLayer<T>::forward(Buf<T> x, bool training) {
  if (x.rank() < 1 || x.dim(-1) != in_)
    throw ShapeError("Linear",
                     "expects a last dimension of " + std::to_string(in_) + ", got " + shape_str(x.shape));
  const std::int64_t rows = x.numel() / in_;
  auto shape = x.shape;
  shape.back() = out_;
  Buf<T> y(shape);
  gemm(false, true, rows, out_, in_, T(1), x.data(), in_, weight.value.data(), in_, T(0), y.data(), out_);
  MapM<T> Y(y.data(), rows, out_);
  if (has_bias_) Y.rowwise() += Eigen::Map<const RowV<T>>(bias.value.data(), out_);
  if (training) x_ = std::move(x);
  return y;
}

template <class T> Buf<T> DenseLayer<T>::backward(Buf<T> g) {
  if (x_.shape.empty()) no_cache("Linear::backward");
  auto out_shape = x_.shape;
  out_shape.back() = out_;
  expect_grad_shape("Linear::backward", g.shape, out_shape);
  const std::int64_t rows = x_.numel() / in_;
  CMapM<T> dY(g.data(), rows, out_);
  gemm(true, false, out_, in_, rows, T(1), g.data(), out_, x_.data(), in_, T(1), weight.grad.data(), in_);
  if (has_bias_) Eigen::Map<RowV<T>>(bias.grad.data(), out_) += dY.colwise().sum();
  Buf<T> dx(x_.shape);
  gemm(false, false, rows, in_, out_, T(1), g.data(), out_, weight.value.data(), in_, T(0), dx.data(), in_);
  x_ = {};
  return dx;
}

template <class T> void DenseLayer<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  out.push_back({join_name(prefix, "weight"), &weight});
  if (has_bias_) out.push_back({join_name(prefix, "bias"), &bias});
}

// ---- Activations ---------------------------------------------------------------------------

template <class T> Buf<T> ReLU<T>::forward(Buf<T> x, bool training) {
  const std::int64_t n = x.numel();
  T* p = x.data();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) p[i] = p[i] > T(0) ? p[i] : T(0);
  if (training) y_ = x;
  return x;
}

template <class T> Buf<T> ReLU<T>::backward(Buf<T> g) {
  if (y_.shape.empty()) no_cache("ReLU::backward");
  expect_grad_shape("ReLU::backward", g.shape, y_.shape);
  const std::int64_t n = g.numel();
  T* pg = g.data();
  const T* py = y_.data();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i)
    if (!(py[i] > T(0))) pg[i] = T(0);
  y_ = {};
  return g;
}

template <class T> Buf<T> GELU<T>::forward(Buf<T> x, bool training) {
  Buf<T> y(x.shape);
  const std::int64_t n = x.numel();
  const T* px = x.data();
  T* py = y.data();
  const T r2 = static_cast<T>(1.0 / std::numbers::sqrt2);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) py[i] = T(0.5) * px[i] * (T(1) + std::erf(px[i] * r2));
  if (training) x_ = std::move(x);
  return y;
}

template <class T> Buf<T> GELU<T>::backward(Buf<T> g) {
  if (x_.shape.empty()) no_cache("GELU::backward");
  expect_grad_shape("GELU::backward", g.shape, x_.shape);
  const std::int64_t n = g.numel();
  T* pg = g.data();
  const T* px = x_.data();
  const T r2 = static_cast<T>(1.0 / std::numbers::sqrt2);
  const T inv_sqrt_2pi = static_cast<T>(std::numbers::inv_sqrtpi / std::numbers::sqrt2);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) {
    const T x = px[i];
    const T cdf = T(0.5) * (T(1) + std::erf(x * r2));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x * x);
    pg[i] *= cdf + x * pdf;
  }
  x_ = {};
  return g;
}

// ---- LayerNorm -----------------------------------------------------------------------------

template <class T> LayerNorm<T>::LayerNorm(std::vector<std::int64_t> normalized_shape, double eps)
    : weight(normalized_shape, Init::Ones),
      bias(normalized_shape, Init::Zeros),
      norm_shape_(normalized_shape),
      d_(numel_of(normalized_shape)),
      eps_(eps) {}

template <class T> Buf<T> LayerNorm<T>::forward(Buf<T> x, bool training) {
  const std::size_t k = norm_shape_.size();
  if (x.shape.size() < k ||
      !std::equal(norm_shape_.begin(), norm_shape_.end(), x.shape.end() - static_cast<long>(k)))
    throw ShapeError("LayerNorm", "normalises over trailing dimensions " + shape_str(norm_shape_) +
                                      ", got input " + shape_str(x.shape));
  const std::int64_t rows = x.numel() / d_, d = d_;
  Buf<T> y(x.shape);
  if (training) {
    xhat_ = Buf<T>(x.shape);
    rstd_.assign(static_cast<std::size_t>(rows), T(0));
  }
  const T* px = x.data();
  const T* w = weight.value.data();
  const T* b = bias.value.data();
  T* py = y.data();
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = px + r * d;
    double mean = 0, var = 0;  // row statistics in double: rows may be C*H*W long
    for (std::int64_t j = 0; j < d; ++j) mean += xr[j];
    mean /= static_cast<double>(d);
    for (std::int64_t j = 0; j < d; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= static_cast<double>(d);
    const double rstd = 1.0 / std::sqrt(var + eps_);
    T* yr = py + r * d;
    T* hr = training ? xhat_.data() + r * d : nullptr;
    for (std::int64_t j = 0; j < d; ++j) {
      const T h = static_cast<T>((xr[j] - mean) * rstd);
      if (hr) hr[j] = h;
      yr[j] = h * w[j] + b[j];
    }
    if (training) rstd_[static_cast<std::size_t>(r)] = static_cast<T>(rstd);
  }
  return y;
}

template <class T> Buf<T> LayerNorm<T>::backward(Buf<T> g) {
  if (xhat_.shape.empty()) no_cache("LayerNorm::backward");
  expect_grad_shape("LayerNorm::backward", g.shape, xhat_.shape);
  const std::int64_t rows = g.numel() / d_, d = d_;
  const T* pg = g.data();
  const T* ph = xhat_.data();
  // Parameter gradients: reduce over rows, one column block per thread, in a fixed order.
  constexpr std::int64_t kBlock = 64;
  const std::int64_t nblocks = (d + kBlock - 1) / kBlock;
  T* dw = weight.grad.data();
  T* db = bias.grad.data();
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (std::int64_t jb = 0; jb < nblocks; ++jb) {
    const std::int64_t j0 = jb * kBlock, j1 = std::min(d, j0 + kBlock);
    double sw[kBlock] = {}, sb[kBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = j0; j < j1; ++j) {
        sw[j - j0] += static_cast<double>(pg[r * d + j]) * ph[r * d + j];
        sb[j - j0] += pg[r * d + j];
      }
    for (std::int64_t j = j0; j < j1; ++j) {
      dw[j] += static_cast<T>(sw[j - j0]);
      db[j] += static_cast<T>(sb[j - j0]);
    }
  }
  Buf<T> dx(g.shape);
  const T* w = weight.value.data();
  T* pdx = dx.data();
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* gr = pg + r * d;
    const T* hr = ph + r * d;
    double m1 = 0, m2 = 0;  // mean(dxhat), mean(dxhat * xhat)
    for (std::int64_t j = 0; j < d; ++j) {
      const double dh = static_cast<double>(gr[j]) * w[j];
      m1 += dh;
      m2 += dh * hr[j];
    }
    m1 /= static_cast<double>(d);
    m2 /= static_cast<double>(d);
    const double rstd = rstd_[static_cast<std::size_t>(r)];
    T* dr = pdx + r * d;
    for (std::int64_t j = 0; j < d; ++j)
      dr[j] = static_cast<T>(rstd * (static_cast<double>(gr[j]) * w[j] - m1 - hr[j] * m2));
  }
  xhat_ = {};
  rstd_.clear();
  return dx;
}

template <class T> void LayerNorm<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  out.push_back({join_name(prefix, "weight"), &weight});
  out.push_back({join_name(prefix, "bias"), &bias});
}

// ---- Conv2d --------------------------------------------------------------------------------

namespace {

// Samples per im2col chunk, so that a chunk's column matrix stays around 4M elements.
std::int64_t conv_chunk(std::int64_t n, std::int64_t k_rows, std::int64_t hw) {
  constexpr std::int64_t kChunkElems = std::int64_t{1} << 22;
  return std::clamp<std::int64_t>(kChunkElems / std::max<std::int64_t>(1, k_rows * hw), 1,
                                  std::max<std::int64_t>(n, 1));
}

// col[(c*k + ky)*k + kx, g*HW + y*W + x] = x[n0 + g, c, y + ky - pad, x + kx - pad] (0 outside).
template <class T> void im2col(const T* x, std::int64_t n0, std::int64_t g_count, std::int64_t c_in,
                               std::int64_t h, std::int64_t w, int k, T* col) {
  const int pad = k / 2;
  const std::int64_t hw = h * w, cols = g_count * hw, krows = c_in * k * k;
#pragma omp parallel for schedule(static) if (krows * cols >= kParallelMin)
  for (std::int64_t r = 0; r < krows; ++r) {
    const std::int64_t c = r / (k * k);
    const int ky = static_cast<int>((r / k) % k), kx = static_cast<int>(r % k);
    T* dst = col + r * cols;
    for (std::int64_t g = 0; g < g_count; ++g) {
      const T* plane = x + ((n0 + g) * c_in + c) * hw;
      for (std::int64_t oy = 0; oy < h; ++oy) {
        const std::int64_t iy = oy + ky - pad;
        T* d = dst + g * hw + oy * w;
        if (iy < 0 || iy >= h) {
          std::fill(d, d + w, T(0));
          continue;
        }
        for (std::int64_t ox = 0; ox < w; ++ox) {
          const std::int64_t ix = ox + kx - pad;
          d[ox] = (ix >= 0 && ix < w) ? plane[iy * w + ix] : T(0);
        }
      }
    }
  }
}

}  // namespace

template <class T> ConvLayer<T>::ConvLayer(std::int64_t in, std::int64_t out, int kernel)
    : weight({out, in, kernel, kernel}, Init::Uniform,
             1.0 / std::sqrt(static_cast<double>(in * kernel * kernel))),
      bias({out}, Init::Uniform, 1.0 / std::sqrt(static_cast<double>(in * kernel * kernel))),
      in_(in),
      out_(out),
      k_(kernel) {
  if (kernel != 1 && kernel != 3)
    throw ConfigError("Conv2d", "kernel must be 1 or 3, got " + std::to_string(kernel));
}

template <class T> Buf<T> ConvLayer<T>::forward(Buf<T> x, bool training) {
  expect_rank("Conv2d", x.shape, 4, "[N, C, H, W]");
  if (x.dim(1) != in_)
    throw ShapeError("Conv2d",
                     "expects " + std::to_string(in_) + " input channels, got " + shape_str(x.shape));
  const std::int64_t n = x.dim(0), h = x.dim(2), w = x.dim(3), hw = h * w, krows = in_ * k_ * k_;
  Buf<T> y({n, out_, h, w});
  const std::int64_t chunk = conv_chunk(n, krows, hw);
  std::vector<T> col(static_cast<std::size_t>(krows * chunk * hw)),
      out(static_cast<std::size_t>(out_ * chunk * hw));
  for (std::int64_t n0 = 0; n0 < n; n0 += chunk) {
    const std::int64_t gc = std::min(chunk, n - n0), cols = gc * hw;
    im2col(x.data(), n0, gc, in_, h, w, k_, col.data());
    gemm(false, false, out_, cols, krows, T(1), weight.value.data(), krows, col.data(), cols, T(0),
         out.data(), cols);
    T* py = y.data();
    const T* pb = bias.value.data();
#pragma omp parallel for schedule(static) if (out_ * cols >= kParallelMin)
    for (std::int64_t j = 0; j < gc * out_; ++j) {
      const std::int64_t g = j / out_, co = j % out_;
      const T* src = out.data() + co * cols + g * hw;
      T* dst = py + ((n0 + g) * out_ + co) * hw;
      for (std::int64_t p = 0; p < hw; ++p) dst[p] = src[p] + pb[co];
    }
  }
  if (training) x_ = std::move(x);
  return y;
}

template <class T> Buf<T> ConvLayer<T>::backward(Buf<T> gout) {
  if (x_.shape.empty()) no_cache("Conv2d::backward");
  const std::int64_t n = x_.dim(0), h = x_.dim(2), w = x_.dim(3), hw = h * w, krows = in_ * k_ * k_;
  expect_grad_shape("Conv2d::backward", gout.shape, {n, out_, h, w});
  const int pad = k_ / 2, k = k_;
  Buf<T> dx(x_.shape);
  const std::int64_t chunk = conv_chunk(n, krows, hw);
  std::vector<T> col(static_cast<std::size_t>(krows * chunk * hw)),
      dy(static_cast<std::size_t>(out_ * chunk * hw)), dcol(col.size());
  for (std::int64_t n0 = 0; n0 < n; n0 += chunk) {
    const std::int64_t gc = std::min(chunk, n - n0), cols = gc * hw;
    im2col(x_.data(), n0, gc, in_, h, w, k_, col.data());
    const T* pg = gout.data();
#pragma omp parallel for schedule(static) if (out_ * cols >= kParallelMin)
    for (std::int64_t j = 0; j < gc * out_; ++j) {
      const std::int64_t g = j / out_, co = j % out_;
      std::copy_n(pg + ((n0 + g) * out_ + co) * hw, hw, dy.data() + co * cols + g * hw);
    }
    CMapM<T> dY(dy.data(), out_, cols);
    gemm(false, true, out_, krows, cols, T(1), dy.data(), cols, col.data(), cols, T(1), weight.grad.data(),
         krows);
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(bias.grad.data(), out_) += dY.rowwise().sum();
    gemm(true, false, krows, cols, out_, T(1), weight.value.data(), krows, dy.data(), cols, T(0), dcol.data(),
         cols);
    // col2im: each (sample, channel) plane gathers its kernel taps, so threads never collide.
    T* pdx = dx.data();
#pragma omp parallel for schedule(static) if (krows * cols >= kParallelMin)
    for (std::int64_t j = 0; j < gc * in_; ++j) {
      const std::int64_t g = j / in_, c = j % in_;
      T* plane = pdx + ((n0 + g) * in_ + c) * hw;
      for (int ky = 0; ky < k; ++ky)
        for (int kx = 0; kx < k; ++kx) {
          const T* src = dcol.data() + ((c * k + ky) * k + kx) * cols + g * hw;
          for (std::int64_t oy = 0; oy < h; ++oy) {
            const std::int64_t iy = oy + ky - pad;
            if (iy < 0 || iy >= h) continue;
            for (std::int64_t ox = 0; ox < w; ++ox) {
              const std::int64_t ix = ox + kx - pad;
              if (ix >= 0 && ix < w) plane[iy * w + ix] += src[oy * w + ox];
            }
          }
        }
    }
  }
  x_ = {};
  return dx;
}

template <class T> void ConvLayer<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  out.push_back({join_name(prefix, "weight"), &weight});
  out.push_back({join_name(prefix, "bias"), &bias});
}

// ---- Pooling and reshapes ------------------------------------------------------------------

namespace {
inline std::int64_t bin_start(std::int64_t i, std::int64_t in, std::int64_t out) { return (i * in) / out; }
inline std::int64_t bin_end(std::int64_t i, std::int64_t in, std::int64_t out) {
  return ((i + 1) * in + out - 1) / out;
}
}  // namespace

template <class T> Buf<T> AdaptiveAvgPool2d<T>::forward(Buf<T> x, bool training) {
  expect_rank("AdaptiveAvgPool2d", x.shape, 4, "[N, C, H, W]");
  const std::int64_t planes = x.dim(0) * x.dim(1), h = x.dim(2), w = x.dim(3);
  if (oh_ > h || ow_ > w)
    throw ShapeError("AdaptiveAvgPool2d", "cannot pool " + shape_str(x.shape) + " up to " +
                                              std::to_string(oh_) + "x" + std::to_string(ow_));
  Buf<T> y({x.dim(0), x.dim(1), oh_, ow_});
  const T* px = x.data();
  T* py = y.data();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
  for (std::int64_t p = 0; p < planes; ++p) {
    const T* src = px + p * h * w;
    for (std::int64_t i = 0; i < oh_; ++i) {
      const std::int64_t y0 = bin_start(i, h, oh_), y1 = bin_end(i, h, oh_);
      for (std::int64_t j = 0; j < ow_; ++j) {
        const std::int64_t x0 = bin_start(j, w, ow_), x1 = bin_end(j, w, ow_);
        T s = 0;
        for (std::int64_t yy = y0; yy < y1; ++yy)
          for (std::int64_t xx = x0; xx < x1; ++xx) s += src[yy * w + xx];
        py[(p * oh_ + i) * ow_ + j] = s / static_cast<T>((y1 - y0) * (x1 - x0));
      }
    }
  }
  if (training) in_shape_ = x.shape;
  return y;
}

template <class T> Buf<T> AdaptiveAvgPool2d<T>::backward(Buf<T> g) {
  if (in_shape_.empty()) no_cache("AdaptiveAvgPool2d::backward");
  expect_grad_shape("AdaptiveAvgPool2d::backward", g.shape, {in_shape_[0], in_shape_[1], oh_, ow_});
  const std::int64_t planes = in_shape_[0] * in_shape_[1], h = in_shape_[2], w = in_shape_[3];
  Buf<T> dx(in_shape_);
  const T* pg = g.data();
  T* pdx = dx.data();
#pragma omp parallel for schedule(static) if (dx.numel() >= kParallelMin)
  for (std::int64_t p = 0; p < planes; ++p) {
    T* dst = pdx + p * h * w;
    for (std::int64_t i = 0; i < oh_; ++i) {
      const std::int64_t y0 = bin_start(i, h, oh_), y1 = bin_end(i, h, oh_);
      for (std::int64_t j = 0; j < ow_; ++j) {
        const std::int64_t x0 = bin_start(j, w, ow_), x1 = bin_end(j, w, ow_);
        const T v = pg[(p * oh_ + i) * ow_ + j] / static_cast<T>((y1 - y0) * (x1 - x0));
        for (std::int64_t yy = y0; yy < y1; ++yy)
          for (std::int64_t xx = x0; xx < x1; ++xx) dst[yy * w + xx] += v;
      }
    }
  }
  in_shape_.clear();
  return dx;
}

template <class T> Buf<T> GlobalAvgPool<T>::forward(Buf<T> x, bool training) {
  expect_rank("GlobalAvgPool", x.shape, 4, "[N, C, H, W]");
  const std::int64_t planes = x.dim(0) * x.dim(1), hw = x.dim(2) * x.dim(3);
  Buf<T> y({x.dim(0), x.dim(1)});
  for (std::int64_t p = 0; p < planes; ++p) {
    T s = 0;
    for (std::int64_t i = 0; i < hw; ++i) s += x.v[static_cast<std::size_t>(p * hw + i)];
    y.v[static_cast<std::size_t>(p)] = s / static_cast<T>(hw);
  }
  if (training) in_shape_ = x.shape;
  return y;
}

template <class T> Buf<T> GlobalAvgPool<T>::backward(Buf<T> g) {
  if (in_shape_.empty()) no_cache("GlobalAvgPool::backward");
  expect_grad_shape("GlobalAvgPool::backward", g.shape, {in_shape_[0], in_shape_[1]});
  const std::int64_t hw = in_shape_[2] * in_shape_[3];
  Buf<T> dx(in_shape_);
  for (std::int64_t p = 0; p < g.numel(); ++p)
    std::fill_n(dx.data() + p * hw, hw, g.v[static_cast<std::size_t>(p)] / static_cast<T>(hw));
  in_shape_.clear();
  return dx;
}

template <class T> Buf<T> Flatten<T>::forward(Buf<T> x, bool training) {
  if (x.rank() < 1) throw ShapeError("Flatten", "expects a batch, got a scalar");
  if (training) in_shape_ = x.shape;
  const std::int64_t f = numel_of(std::vector<std::int64_t>(x.shape.begin() + 1, x.shape.end()));
  x.shape = {x.dim(0), f};
  return x;
}

template <class T> Buf<T> Flatten<T>::backward(Buf<T> g) {
  if (in_shape_.empty()) no_cache("Flatten::backward");
  if (g.numel() != numel_of(in_shape_))
    throw ShapeError("Flatten::backward",
                     "gradient " + shape_str(g.shape) + " for input " + shape_str(in_shape_));
  g.shape = in_shape_;
  in_shape_.clear();
  return g;
}

template <class T> Buf<T> ToTokens<T>::forward(Buf<T> x, bool training) {
  expect_rank("ToTokens", x.shape, 4, "[N, C, H, W]");
  const std::int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
  Buf<T> y({n, hw, c});
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i)
    MapM<T>(y.data() + i * hw * c, hw, c) = CMapM<T>(x.data() + i * c * hw, c, hw).transpose();
  if (training) in_shape_ = x.shape;
  return y;
}

template <class T> Buf<T> ToTokens<T>::backward(Buf<T> g) {
  if (in_shape_.empty()) no_cache("ToTokens::backward");
  const std::int64_t n = in_shape_[0], c = in_shape_[1], hw = in_shape_[2] * in_shape_[3];
  expect_grad_shape("ToTokens::backward", g.shape, {n, hw, c});
  Buf<T> dx(in_shape_);
#pragma omp parallel for schedule(static) if (dx.numel() >= kParallelMin)
  for (std::int64_t i = 0; i < n; ++i)
    MapM<T>(dx.data() + i * c * hw, c, hw) = CMapM<T>(g.data() + i * hw * c, hw, c).transpose();
  in_shape_.clear();
  return dx;
}

template <class T> ClsToken<T>::ClsToken(std::int64_t dim) : token({1, 1, dim}, Init::Zeros), dim_(dim) {}

template <class T> Buf<T> ClsToken<T>::forward(Buf<T> x, bool /*training*/) {
  expect_rank("ClsToken", x.shape, 3, "[N, T, D]");
  if (x.dim(2) != dim_)
    throw ShapeError("ClsToken", "expects width " + std::to_string(dim_) + ", got " + shape_str(x.shape));
  const std::int64_t n = x.dim(0), t = x.dim(1), d = dim_;
  Buf<T> y({n, t + 1, d});
  for (std::int64_t i = 0; i < n; ++i) {
    std::copy_n(token.value.data(), d, y.data() + i * (t + 1) * d);
    std::copy_n(x.data() + i * t * d, t * d, y.data() + (i * (t + 1) + 1) * d);
  }
  return y;
}

template <class T> Buf<T> ClsToken<T>::backward(Buf<T> g) {
  expect_rank("ClsToken::backward", g.shape, 3, "[N, T+1, D]");
  if (g.dim(2) != dim_ || g.dim(1) < 1)
    throw ShapeError("ClsToken::backward", "bad gradient " + shape_str(g.shape));
  const std::int64_t n = g.dim(0), t = g.dim(1) - 1, d = dim_;
  Buf<T> dx({n, t, d});
  for (std::int64_t i = 0; i < n; ++i) {
    const T* src = g.data() + i * (t + 1) * d;
    for (std::int64_t j = 0; j < d; ++j) token.grad[static_cast<std::size_t>(j)] += src[j];
    std::copy_n(src + d, t * d, dx.data() + i * t * d);
  }
  return dx;
}

template <class T> void ClsToken<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  out.push_back({prefix, &token});
}

template <class T> Buf<T> TakeToken<T>::forward(Buf<T> x, bool training) {
  expect_rank("TakeToken", x.shape, 3, "[N, T, D]");
  if (index_ >= x.dim(1))
    throw ShapeError("TakeToken", "no token " + std::to_string(index_) + " in " + shape_str(x.shape));
  const std::int64_t n = x.dim(0), t = x.dim(1), d = x.dim(2);
  Buf<T> y({n, d});
  for (std::int64_t i = 0; i < n; ++i) std::copy_n(x.data() + (i * t + index_) * d, d, y.data() + i * d);
  if (training) in_shape_ = x.shape;
  return y;
}

template <class T> Buf<T> TakeToken<T>::backward(Buf<T> g) {
  if (in_shape_.empty()) no_cache("TakeToken::backward");
  const std::int64_t n = in_shape_[0], t = in_shape_[1], d = in_shape_[2];
  expect_grad_shape("TakeToken::backward", g.shape, {n, d});
  Buf<T> dx(in_shape_);
  for (std::int64_t i = 0; i < n; ++i) std::copy_n(g.data() + i * d, d, dx.data() + (i * t + index_) * d);
  in_shape_.clear();
  return dx;
}

// ---- Attention -----------------------------------------------------------------------------

template <class T> MultiHeadSelfAttention<T>::MultiHeadSelfAttention(std::int64_t dim, int heads)
    : qkv(dim, 3 * dim, false), proj(dim, dim, true), dim_(dim), heads_(heads) {
  if (heads < 1 || dim % heads != 0)
    throw ConfigError("MultiHeadSelfAttention", "dim " + std::to_string(dim) + " is not divisible by " +
                                                    std::to_string(heads) + " heads");
}

namespace {
template <class T> void softmax_rows(MatR<T>& s) {
  for (Eigen::Index r = 0; r < s.rows(); ++r) {
    auto row = s.row(r);
    row.array() -= row.maxCoeff();
    row = row.array().exp().matrix();
    row /= row.sum();
  }
}
}  // namespace

template <class T> Buf<T> MultiHeadSelfAttention<T>::forward(Buf<T> x, bool training) {
  expect_rank("MultiHeadSelfAttention", x.shape, 3, "[N, T, D]");
  const std::int64_t n = x.dim(0), t = x.dim(1), d = dim_, dh = dim_ / heads_;
  Buf<T> q = qkv.forward(std::move(x), training);  // [N, T, 3D]: q | k | v, heads contiguous within each
  Buf<T> att({n, t, d});
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dh)));
  const std::int64_t jobs = n * heads_;
#pragma omp parallel for schedule(static) if (jobs > 1 && n * t * t * d >= kParallelMin)
  for (std::int64_t job = 0; job < jobs; ++job) {
    const std::int64_t i = job / heads_, h = job % heads_;
    const T* base = q.data() + i * t * 3 * d + h * dh;
    const Eigen::OuterStride<> s3(3 * d);
    CSMapM<T> Q(base, t, dh, s3), K(base + d, t, dh, s3), V(base + 2 * d, t, dh, s3);
    MatR<T> P = (Q * K.transpose()) * scale;
    softmax_rows(P);
    SMapM<T>(att.data() + i * t * d + h * dh, t, dh, Eigen::OuterStride<>(d)).noalias() = P * V;
  }
  Buf<T> y = proj.forward(std::move(att), training);
  if (training) qkv_out_ = std::move(q);
  return y;
}

template <class T> Buf<T> MultiHeadSelfAttention<T>::backward(Buf<T> g) {
  if (qkv_out_.shape.empty()) no_cache("MultiHeadSelfAttention::backward");
  Buf<T> datt = proj.backward(std::move(g));
  const std::int64_t n = qkv_out_.dim(0), t = qkv_out_.dim(1), d = dim_, dh = dim_ / heads_;
  Buf<T> dq({n, t, 3 * d});
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dh)));
  const std::int64_t jobs = n * heads_;
#pragma omp parallel for schedule(static) if (jobs > 1 && n * t * t * d >= kParallelMin)
  for (std::int64_t job = 0; job < jobs; ++job) {
    const std::int64_t i = job / heads_, h = job % heads_;
    const std::int64_t off = i * t * 3 * d + h * dh;
    const Eigen::OuterStride<> s3(3 * d);
    CSMapM<T> Q(qkv_out_.data() + off, t, dh, s3), K(qkv_out_.data() + off + d, t, dh, s3),
        V(qkv_out_.data() + off + 2 * d, t, dh, s3);
    CSMapM<T> dO(datt.data() + i * t * d + h * dh, t, dh, Eigen::OuterStride<>(d));
    MatR<T> P = (Q * K.transpose()) * scale;
    softmax_rows(P);
    MatR<T> dP = dO * V.transpose();
    SMapM<T>(dq.data() + off + 2 * d, t, dh, s3).noalias() = P.transpose() * dO;
    // Softmax backward: dS = P * (dP - rowsum(dP * P)).
    const Eigen::Matrix<T, Eigen::Dynamic, 1> rowdot = dP.cwiseProduct(P).rowwise().sum();
    dP.colwise() -= rowdot;
    const MatR<T> dS = P.cwiseProduct(dP) * scale;
    SMapM<T>(dq.data() + off, t, dh, s3).noalias() = dS * K;
    SMapM<T>(dq.data() + off + d, t, dh, s3).noalias() = dS.transpose() * Q;
  }
  qkv_out_ = {};
  return qkv.backward(std::move(dq));
}

template <class T>
void MultiHeadSelfAttention<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  qkv.parameters(join_name(prefix, "qkv"), out);
  proj.parameters(join_name(prefix, "proj"), out);
}

template <class T>
TransformerBlock<T>::TransformerBlock(std::int64_t dim, int heads, int mlp_ratio, double eps)
    : norm1({dim}, eps),
      attn(dim, heads),
      norm2({dim}, eps),
      fc1(dim, dim * mlp_ratio),
      fc2(dim * mlp_ratio, dim) {}

template <class T> Buf<T> TransformerBlock<T>::forward(Buf<T> x, bool training) {
  add_into(x, attn.forward(norm1.forward(x, training), training));
  add_into(x,
           fc2.forward(act.forward(fc1.forward(norm2.forward(x, training), training), training), training));
  return x;
}

template <class T> Buf<T> TransformerBlock<T>::backward(Buf<T> g) {
  add_into(g, norm2.backward(fc1.backward(act.backward(fc2.backward(g)))));
  add_into(g, norm1.backward(attn.backward(g)));
  return g;
}

template <class T>
void TransformerBlock<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  norm1.parameters(join_name(prefix, "norm1"), out);
  attn.parameters(join_name(prefix, "attn"), out);
  norm2.parameters(join_name(prefix, "norm2"), out);
  fc1.parameters(join_name(prefix, "mlp.fc1"), out);
  fc2.parameters(join_name(prefix, "mlp.fc2"), out);
}

// ---- Sequential ----------------------------------------------------------------------------

template <class T> Sequential<T>& Sequential<T>::add(std::string name, std::unique_ptr<Layer<T>> layer) {
  layers_.emplace_back(std::move(name), std::move(layer));
  return *this;
}

template <class T> Buf<T> Sequential<T>::forward(Buf<T> x, bool training) {
  for (auto& [name, layer] : layers_) x = layer->forward(std::move(x), training);
  return x;
}

template <class T> Buf<T> Sequential<T>::backward(Buf<T> g) {
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) g = it->second->backward(std::move(g));
  return g;
}

template <class T> void Sequential<T>::parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) {
  for (auto& [name, layer] : layers_) layer->parameters(join_name(prefix, name), out);
}

#define DIFFPROBE_HEADS_INSTANTIATE(T)      \
  template struct Param<T>;                 \
  template class DenseLayer<T>;             \
  template class ReLU<T>;                   \
  template class GELU<T>;                   \
  template class LayerNorm<T>;              \
  template class ConvLayer<T>;              \
  template class AdaptiveAvgPool2d<T>;      \
  template class GlobalAvgPool<T>;          \
  template class Flatten<T>;                \
  template class ToTokens<T>;               \
  template class ClsToken<T>;               \
  template class TakeToken<T>;              \
  template class MultiHeadSelfAttention<T>; \
  template class TransformerBlock<T>;       \
  template class Sequential<T>;

DIFFPROBE_HEADS_INSTANTIATE(float)
DIFFPROBE_HEADS_INSTANTIATE(double)
#undef DIFFPROBE_HEADS_INSTANTIATE

}  // namespace diffprobe::heads
