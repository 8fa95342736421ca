// PIL-compatible antialiased bicubic resampling, against a plain double-precision reference
// written here from the definition: the Keys cubic (a = -0.5) stretched by the downscale factor,
// normalised weights, separable passes, no intermediate rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/resize.hpp"

using namespace diffprobe;
using namespace diffprobe::data;

namespace {

double keys(double x) {
  x = std::abs(x);
  if (x < 1) return 1.5 * x * x * x - 2.5 * x * x + 1;
  if (x < 2) return -0.5 * x * x * x + 2.5 * x * x - 4 * x + 2;
  return 0;
}

// Weights [out][in] for one axis.
std::vector<std::vector<double>> ref_weights(int in, int out) {
  const double scale = static_cast<double>(in) / out, fs = std::max(1.0, scale);
  std::vector<std::vector<double>> w(static_cast<std::size_t>(out),
                                     std::vector<double>(static_cast<std::size_t>(in), 0.0));
  for (int o = 0; o < out; ++o) {
    const double center = (o + 0.5) * scale;
    double sum = 0;
    for (int i = 0; i < in; ++i)
      sum += w[static_cast<std::size_t>(o)][static_cast<std::size_t>(i)] = keys((i + 0.5 - center) / fs);
    for (int i = 0; i < in; ++i) w[static_cast<std::size_t>(o)][static_cast<std::size_t>(i)] /= sum;
  }
  return w;
}

// Exact (unrounded) resized values [H][W][C].
std::vector<double> ref_resize(const Image& src, int W, int H) {
  const auto wx = ref_weights(src.width, W), wy = ref_weights(src.height, H);
  const int C = src.channels;
  std::vector<double> mid(static_cast<std::size_t>(src.height * W * C)),
      out(static_cast<std::size_t>(H * W * C));
  for (int y = 0; y < src.height; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < C; ++c) {
        double s = 0;
        for (int i = 0; i < src.width; ++i)
          s += wx[static_cast<std::size_t>(x)][static_cast<std::size_t>(i)] * src.at(y, i, c);
        mid[static_cast<std::size_t>((y * W + x) * C + c)] = s;
      }
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < C; ++c) {
        double s = 0;
        for (int i = 0; i < src.height; ++i)
          s += wy[static_cast<std::size_t>(y)][static_cast<std::size_t>(i)] *
               mid[static_cast<std::size_t>((i * W + x) * C + c)];
        out[static_cast<std::size_t>((y * W + x) * C + c)] = s;
      }
  return out;
}

// Smooth content (a few low-frequency waves) keeps every intermediate value inside the sample
// range, so 8-bit PIL arithmetic can differ from the exact result only by its rounding.
Image smooth_image(int w, int h, int c, int depth, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  Image img = Image::blank(w, h, c, depth);
  const double maxv = depth == 16 ? 65535 : 255;
  for (int k = 0; k < c; ++k) {
    const double fx = 0.5 + 2 * u(rng), fy = 0.5 + 2 * u(rng), ph = 6 * u(rng);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const double v = 0.5 + 0.35 * std::sin(fx * 6.2832 * x / w + ph) * std::cos(fy * 6.2832 * y / h);
        img.at(y, x, k) = static_cast<std::uint16_t>(std::lround(v * maxv));
      }
  }
  return img;
}

struct Case {
  int w, h, c, W, H;
};
const Case kCases[] = {{64, 48, 3, 32, 24}, {300, 200, 3, 48, 32}, {37, 23, 1, 16, 16},
                       {17, 9, 3, 60, 31},  {50, 50, 1, 50, 13},   {40, 33, 2, 40, 33},
                       {100, 3, 1, 7, 1},   {5, 120, 4, 5, 33},    {256, 256, 3, 224, 224}};

}  // namespace

TEST(DataResize, EightBitMatchesDoubleReferenceWithinOneLevel) {
  double worst = 0, sum = 0;
  std::size_t count = 0;
  unsigned seed = 1;
  for (const Case& k : kCases) {
    const Image src = smooth_image(k.w, k.h, k.c, 8, seed++);
    const Image out = resize_bicubic(src, k.W, k.H);
    ASSERT_EQ(out.width, k.W);
    ASSERT_EQ(out.height, k.H);
    ASSERT_EQ(out.channels, k.c);
    const auto ref = ref_resize(src, k.W, k.H);
    for (std::size_t i = 0; i < ref.size(); ++i) {
      worst = std::max(worst, std::abs(out.samples[i] - std::nearbyint(std::clamp(ref[i], 0.0, 255.0))));
      sum += std::abs(out.samples[i] - std::clamp(ref[i], 0.0, 255.0));
      ++count;
    }
  }
  // PIL rounds after each pass: at most one level from the rounded exact value.
  EXPECT_LE(worst, 1.0);
  EXPECT_LT(sum / static_cast<double>(count), 0.3);  // mean distance to the unrounded value
  std::printf(
      "8-bit resize vs double reference: worst %.0f level(s) from the rounded value, mean %.4f from the "
      "exact\n",
      worst, sum / static_cast<double>(count));
}

TEST(DataResize, SixteenBitMatchesDoubleReference) {
  double worst = 0;
  unsigned seed = 100;
  for (const Case& k : kCases) {
    const Image src = smooth_image(k.w, k.h, k.c, 16, seed++);
    const Image out = resize_bicubic(src, k.W, k.H);
    EXPECT_EQ(out.depth, 16);
    const auto ref = ref_resize(src, k.W, k.H);
    for (std::size_t i = 0; i < ref.size(); ++i)
      worst = std::max(worst, std::abs(out.samples[i] - std::clamp(std::nearbyint(ref[i]), 0.0, 65535.0)));
  }
  EXPECT_LE(worst, 1.0);  // float32 intermediate, final rounding
  std::printf("16-bit resize vs double reference: worst %.1f of 65535\n", worst);
}

TEST(DataResize, NoiseStaysWithinRangeAndCloseToReference) {
  // Raw noise overshoots: PIL clips after the first pass, so a few levels of difference are
  // expected where the exact result leaves [0, 255]; the output must still be in range.
  std::mt19937 rng(9);
  Image src = Image::blank(91, 67, 3);
  for (auto& s : src.samples) s = static_cast<std::uint16_t>(rng() % 256);
  const Image out = resize_bicubic(src, 40, 29);
  const auto ref = ref_resize(src, 40, 29);
  double sum = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    EXPECT_LE(out.samples[i], 255);
    sum += std::abs(out.samples[i] - std::clamp(ref[i], 0.0, 255.0));
  }
  EXPECT_LT(sum / static_cast<double>(ref.size()), 0.5);
}

TEST(DataResize, ConstantImageAndIdentity) {
  Image flat = Image::blank(33, 21, 3);
  for (auto& s : flat.samples) s = 173;
  for (auto [W, H] : {std::pair{7, 5}, std::pair{100, 80}, std::pair{33, 4}}) {
    const Image out = resize_bicubic(flat, W, H);
    for (const auto s : out.samples) ASSERT_EQ(s, 173);
  }
  const Image img = smooth_image(19, 13, 3, 8, 4);
  EXPECT_EQ(resize_bicubic(img, 19, 13).samples, img.samples);
}

TEST(DataResize, WindowEqualsCropOfFullResize) {
  const Image img = smooth_image(123, 77, 3, 8, 5);
  const Image full = resize_bicubic(img, 50, 31);
  const Image part = resize_bicubic(img, 50, 31, {7, 3, 20, 25});
  ASSERT_EQ(part.width, 20);
  ASSERT_EQ(part.height, 25);
  for (int y = 0; y < 25; ++y)
    for (int x = 0; x < 20; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(part.at(y, x, c), full.at(y + 3, x + 7, c));
  // Only one axis resized: the other is copied.
  const Image wide = resize_bicubic(img, 123, 40, {10, 0, 100, 40});
  const Image wide_full = resize_bicubic(img, 123, 40);
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 100; ++x) ASSERT_EQ(wide.at(y, x, 2), wide_full.at(y, x + 10, 2));
}

TEST(DataResize, DownscalingIsAntialiased) {
  // A one-pixel checkerboard shrunk 4x: without the stretched kernel (antialias) the result
  // would alias to near black or white; with it every pixel is near mid-grey.
  Image cb = Image::blank(64, 64, 1);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) cb.at(y, x, 0) = ((x + y) % 2) ? 255 : 0;
  const Image out = resize_bicubic(cb, 16, 16);
  for (int y = 1; y < 15; ++y)
    for (int x = 1; x < 15; ++x) EXPECT_NEAR(out.at(y, x, 0), 127.5, 2.0);
}

TEST(DataResize, Errors) {
  const Image img = smooth_image(10, 10, 1, 8, 6);
  EXPECT_THROW(resize_bicubic(img, 0, 5), ArgumentError);
  EXPECT_THROW(resize_bicubic(img, 5, -1), ArgumentError);
  EXPECT_THROW(resize_bicubic(img, 5, 5, {3, 0, 3, 5}), ArgumentError);
  EXPECT_THROW(resize_bicubic(img, 5, 5, {-1, 0, 2, 2}), ArgumentError);
  Image broken = img;
  broken.samples.resize(3);
  EXPECT_THROW(resize_bicubic(broken, 5, 5), ArgumentError);
}
