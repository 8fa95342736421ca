#include "diffprobe/data/resize.hpp"

#include <algorithm>
#include <cmath>

#include "diffprobe/core/error.hpp"

namespace diffprobe::data {
namespace {

// PIL's bicubic kernel (Keys, a = -0.5) and its support.
double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
// PIL's box kernel: 1 on (-0.5, 0.5].
double box(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }
constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL's: 8 bits of result, 2 of headroom

// Per output pixel: the first source pixel, the number of taps and the normalised weights,
// computed exactly as PIL's precompute_coeffs (whole source range as the box).
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<double> k;  // [out][ksize]
};

Coeffs precompute(int in_size, int out_size, ResampleFilter filter) {
  Coeffs c;
  double (*kernel)(double) = filter == ResampleFilter::Box ? box : bicubic;
  const double kernel_support = filter == ResampleFilter::Box ? 0.5 : 2.0;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = kernel_support * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<std::size_t>(out_size));
  c.count.resize(static_cast<std::size_t>(out_size));
  c.k.assign(static_cast<std::size_t>(out_size) * static_cast<std::size_t>(c.ksize), 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // PIL rounds with (int)(v + 0.5), truncating toward zero; clamping makes that exact here.
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double* k = &c.k[static_cast<std::size_t>(xx) * static_cast<std::size_t>(c.ksize)];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = kernel((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    if (ww != 0.0)
      for (int x = 0; x < xmax; ++x) k[x] /= ww;
    c.first[static_cast<std::size_t>(xx)] = xmin;
    c.count[static_cast<std::size_t>(xx)] = xmax;
  }
  return c;
}

// PIL's normalize_coeffs_8bpc: weights in 22-bit fixed point, rounded half away from zero.
std::vector<std::int32_t> fixed_point(const Coeffs& c) {
  std::vector<std::int32_t> out(c.k.size());
  for (std::size_t i = 0; i < c.k.size(); ++i) {
    const double v = c.k[i] * (1 << kPrecisionBits);
    out[i] = static_cast<std::int32_t>(c.k[i] < 0 ? -0.5 + v : 0.5 + v);
  }
  return out;
}

inline std::uint16_t clip8(std::int32_t ss) {
  return static_cast<std::uint16_t>(std::clamp(ss >> kPrecisionBits, 0, 255));  // >> floors (C++20)
}

// A plane of samples, channels interleaved, with its own element type (u16 or float).
template <class T> struct Plane {
  int width = 0, height = 0, channels = 0;
  std::vector<T> v;
  T* row(int y) {
    return &v[static_cast<std::size_t>(y) * static_cast<std::size_t>(width) *
              static_cast<std::size_t>(channels)];
  }
  const T* row(int y) const {
    return &v[static_cast<std::size_t>(y) * static_cast<std::size_t>(width) *
              static_cast<std::size_t>(channels)];
  }
};

// A read-only view of someone else's samples.
template <class T> struct View {
  const T* p = nullptr;
  int width = 0, channels = 0;
  const T* row(int y) const {
    return p +
           static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * static_cast<std::size_t>(channels);
  }
};
template <class T> View<T> view(const Plane<T>& p) { return {p.v.data(), p.width, p.channels}; }

// One pass along x (horizontal) of `in` rows [y0, y0 + rows) into output columns [x0, x0 + w).
template <class In, class Out, class Acc, class W, class Finish>
void pass_horizontal(const View<In>& in, int y0, int rows, const Coeffs& c, const std::vector<W>& k, int x0,
                     int w, Acc init, Finish finish, Plane<Out>& out) {
  const int ch = in.channels;
  out.width = w;
  out.height = rows;
  out.channels = ch;
  out.v.resize(static_cast<std::size_t>(w) * static_cast<std::size_t>(rows) * static_cast<std::size_t>(ch));
  for (int r = 0; r < rows; ++r) {
    const In* src = in.row(y0 + r);
    Out* dst = out.row(r);
    for (int xx = 0; xx < w; ++xx) {
      const std::size_t o = static_cast<std::size_t>(x0 + xx);
      const int first = c.first[o], n = c.count[o];
      const W* kk = &k[o * static_cast<std::size_t>(c.ksize)];
      for (int cc = 0; cc < ch; ++cc) {
        Acc ss = init;
        for (int x = 0; x < n; ++x)
          ss += static_cast<Acc>(src[(first + x) * ch + cc]) * static_cast<Acc>(kk[x]);
        dst[xx * ch + cc] = finish(ss);
      }
    }
  }
}

// One pass along y: output rows [y0, y0 + h) where source row i of the coefficients is row
// (i - row_offset) of `in`.
template <class In, class Out, class Acc, class W, class Finish>
void pass_vertical(const View<In>& in, int row_offset, const Coeffs& c, const std::vector<W>& k, int y0,
                   int h, Acc init, Finish finish, Plane<Out>& out) {
  const int ch = in.channels;
  const int rowlen = in.width * ch;
  out.width = in.width;
  out.height = h;
  out.channels = ch;
  out.v.resize(static_cast<std::size_t>(rowlen) * static_cast<std::size_t>(h));
  std::vector<Acc> acc(static_cast<std::size_t>(rowlen));
  for (int yy = 0; yy < h; ++yy) {
    const std::size_t o = static_cast<std::size_t>(y0 + yy);
    const int first = c.first[o] - row_offset, n = c.count[o];
    const W* kk = &k[o * static_cast<std::size_t>(c.ksize)];
    std::fill(acc.begin(), acc.end(), init);
    for (int y = 0; y < n; ++y) {
      const In* src = in.row(first + y);
      const Acc wy = static_cast<Acc>(kk[y]);
      for (int i = 0; i < rowlen; ++i) acc[static_cast<std::size_t>(i)] += static_cast<Acc>(src[i]) * wy;
    }
    Out* dst = out.row(yy);
    for (int i = 0; i < rowlen; ++i) dst[i] = finish(acc[static_cast<std::size_t>(i)]);
  }
}

// Source rows the vertical pass reads for output rows [y0, y0 + h).
std::pair<int, int> rows_needed(const Coeffs& c, int y0, int h) {
  int lo = INT32_MAX, hi = 0;
  for (int y = y0; y < y0 + h; ++y) {
    lo = std::min(lo, c.first[static_cast<std::size_t>(y)]);
    hi = std::max(hi, c.first[static_cast<std::size_t>(y)] + c.count[static_cast<std::size_t>(y)]);
  }
  return {lo, hi};
}

// The two passes (each only when its size changes, as PIL skips them) for element type T,
// intermediate type M, accumulator Acc and weights W.
template <class M, class Acc, class W, class Finish>
Image resample(const Image& src, int width, int height, const OutputWindow& win, const std::vector<W>& kx,
               const std::vector<W>& ky, const Coeffs& cx, const Coeffs& cy, Acc init, Finish finish) {
  const View<std::uint16_t> in{src.samples.data(), src.width, src.channels};
  const bool horizontal = width != src.width, vertical = height != src.height;
  // Rows of the source the output window needs.
  auto [r0, r1] = vertical ? rows_needed(cy, win.y, win.h) : std::pair<int, int>{win.y, win.y + win.h};
  Plane<M> mid;
  if (horizontal) {
    pass_horizontal(in, r0, r1 - r0, cx, kx, win.x, win.w, init, finish, mid);
  } else {  // columns are copied unchanged
    mid.width = win.w;
    mid.height = r1 - r0;
    mid.channels = in.channels;
    mid.v.resize(static_cast<std::size_t>(win.w) * static_cast<std::size_t>(r1 - r0) *
                 static_cast<std::size_t>(in.channels));
    for (int r = r0; r < r1; ++r) {
      const std::uint16_t* s = in.row(r) + win.x * in.channels;
      std::copy(s, s + win.w * in.channels, mid.row(r - r0));
    }
  }
  Plane<M> out;
  if (vertical) {
    pass_vertical(view(mid), r0, cy, ky, win.y, win.h, init, finish, out);
  } else {
    out = std::move(mid);
  }
  Image img = Image::blank(win.w, win.h, src.channels, src.depth);
  if constexpr (std::is_same_v<M, std::uint16_t>) {
    img.samples = std::move(out.v);
  } else {
    for (std::size_t i = 0; i < img.samples.size(); ++i)
      img.samples[i] =
          static_cast<std::uint16_t>(std::clamp(std::nearbyint(static_cast<double>(out.v[i])), 0.0, 65535.0));
  }
  return img;
}

}  // namespace

Image resize(const Image& src, int width, int height, ResampleFilter filter, OutputWindow window) {
  if (src.width < 1 || src.height < 1 || src.channels < 1 || src.channels > 4 ||
      (src.depth != 8 && src.depth != 16) ||
      src.samples.size() != static_cast<std::size_t>(src.width) * static_cast<std::size_t>(src.height) *
                                static_cast<std::size_t>(src.channels))
    throw ArgumentError("resize", "malformed source image");
  if (width < 1 || height < 1)
    throw ArgumentError("resize", "output size " + std::to_string(width) + "x" + std::to_string(height) +
                                      " must be positive");
  if (window.w < 0) window.w = width - window.x;
  if (window.h < 0) window.h = height - window.y;
  if (window.x < 0 || window.y < 0 || window.w < 1 || window.h < 1 || window.x > width - window.w ||
      window.y > height - window.h)
    throw ArgumentError("resize", "window " + std::to_string(window.w) + "x" + std::to_string(window.h) +
                                      " at (" + std::to_string(window.x) + ", " + std::to_string(window.y) +
                                      ") is not inside the " + std::to_string(width) + "x" +
                                      std::to_string(height) + " output");
  const Coeffs cx = precompute(src.width, width, filter), cy = precompute(src.height, height, filter);
  if (src.depth == 8) {
    const auto kx = fixed_point(cx), ky = fixed_point(cy);
    return resample<std::uint16_t>(src, width, height, window, kx, ky, cx, cy,
                                   std::int32_t{1 << (kPrecisionBits - 1)}, clip8);
  }
  // PIL's float path: double sums stored as float32 between the passes.
  return resample<float>(src, width, height, window, cx.k, cy.k, cx, cy, 0.0,
                         [](double s) { return static_cast<float>(s); });
}

}  // namespace diffprobe::data
