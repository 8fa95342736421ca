// Image -> model input: torchvision's size and crop rules, scaling to [-1, 1], channel
// handling, and the seeded random augmentations (random resized crop, shorter-side jitter, flip).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/resize.hpp"
#include "diffprobe/data/transform.hpp"

using namespace diffprobe;
using namespace diffprobe::data;

namespace {

Image gradient_image(int w, int h, int c, unsigned seed) {
  std::mt19937 rng(seed);
  Image img = Image::blank(w, h, c);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k)
        img.at(y, x, k) = static_cast<std::uint16_t>((x * 7 + y * 3 + k * 50 + rng() % 20) % 256);
  return img;
}

std::vector<float> run(const Transform& t, const Image& img, InputSpec spec, std::int64_t epoch = 0,
                       std::int64_t index = 0) {
  std::vector<float> out(static_cast<std::size_t>(spec.channels * spec.size * spec.size));
  t.apply(img, spec, out.data(), epoch, index);
  return out;
}

Transform tv_eval() { return Transform::eval(Preprocess::Torchvision); }

float at(const std::vector<float>& v, int S, int c, int y, int x) {
  return v[static_cast<std::size_t>((c * S + y) * S + x)];
}

}  // namespace

TEST(DataTransform, ShorterSideSizeFollowsTorchvision) {
  EXPECT_EQ(shorter_side_size(500, 375, 256), (std::pair{341, 256}));  // int(256 * 500 / 375) = 341
  EXPECT_EQ(shorter_side_size(375, 500, 256), (std::pair{256, 341}));
  EXPECT_EQ(shorter_side_size(300, 300, 32), (std::pair{32, 32}));
  EXPECT_EQ(shorter_side_size(3, 1000, 64), (std::pair{64, 21333}));
  EXPECT_THROW(shorter_side_size(0, 10, 5), ArgumentError);
}

TEST(DataTransform, CenterCropOffsetsRoundHalfToEven) {
  // 33 x 32 with S = 32: no resize (the shorter side already is S); the left offset is
  // round(0.5) = 0 in Python. 35 x 32: round(1.5) = 2.
  for (auto [w, left] : {std::pair{33, 0}, std::pair{35, 2}, std::pair{34, 1}}) {
    const Image img = gradient_image(w, 32, 3, 1);
    const auto out = run(tv_eval(), img, {3, 32});
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x)
        for (int c = 0; c < 3; ++c)
          ASSERT_EQ(at(out, 32, c, y, x), static_cast<float>(img.at(y, x + left, c)) / 127.5f - 1.0f) << w;
  }
}

TEST(DataTransform, EvalEqualsResizeThenCentreCrop) {
  const Image img = gradient_image(500, 375, 3, 2);
  const int S = 64;
  const auto out = run(tv_eval(), img, {3, S});
  const auto [w, h] = shorter_side_size(500, 375, S);  // 85 x 64
  const Image full = resize_bicubic(img, w, h);
  const int left = static_cast<int>(std::nearbyint((w - S) / 2.0)),
            top = static_cast<int>(std::nearbyint((h - S) / 2.0));
  EXPECT_EQ(left, 10);
  EXPECT_EQ(top, 0);
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x)
      for (int c = 0; c < 3; ++c)
        ASSERT_EQ(at(out, S, c, y, x), static_cast<float>(full.at(y + top, x + left, c)) / 127.5f - 1.0f);
}

TEST(DataTransform, ScalingAndChannels) {
  Image img = Image::blank(4, 4, 1);
  img.at(0, 0, 0) = 255;
  img.at(0, 1, 0) = 0;
  img.at(0, 2, 0) = 51;
  const auto grey = run(tv_eval(), img, {3, 4});
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(at(grey, 4, c, 0, 0), 1.0f);
    EXPECT_EQ(at(grey, 4, c, 0, 1), -1.0f);
    EXPECT_FLOAT_EQ(at(grey, 4, c, 0, 2), 51 / 127.5 - 1);
  }
  Image deep = Image::blank(2, 2, 1, 16);
  deep.samples = {65535, 0, 32768, 1000};
  const auto d = run(tv_eval(), deep, {1, 2});
  EXPECT_EQ(d[0], 1.0f);
  EXPECT_EQ(d[1], -1.0f);
  EXPECT_NEAR(d[2], 32768 / 32767.5 - 1, 1e-7);
  EXPECT_NEAR(d[3], 1000 / 32767.5 - 1, 1e-7);
  // RGB -> 1 channel: luma.
  Image rgb = Image::blank(2, 2, 3);
  for (int k = 0; k < 4; ++k) {
    rgb.samples[static_cast<std::size_t>(3 * k)] = 200;
    rgb.samples[static_cast<std::size_t>(3 * k + 1)] = 100;
    rgb.samples[static_cast<std::size_t>(3 * k + 2)] = 50;
  }
  const auto l = run(tv_eval(), rgb, {1, 2});
  const int luma = (200 * 19595 + 100 * 38470 + 50 * 7471 + 0x8000) >> 16;
  EXPECT_EQ(l[0], static_cast<float>(luma) / 127.5f - 1.0f);
  EXPECT_THROW(run(tv_eval(), rgb, {2, 2}), UnsupportedError);
  EXPECT_THROW(run(tv_eval(), rgb, {3, 0}), ArgumentError);
}

TEST(DataTransform, RandomResizedCropBoxFollowsTorchvisionRules) {
  const Transform t = Transform::torchvision_train(7);
  const int W = 400, H = 300;
  double min_scale = 1, max_scale = 0;
  std::set<std::tuple<int, int, int, int>> distinct;
  for (int i = 0; i < 2000; ++i) {
    const CropBox b = random_resized_crop_box(W, H, t, 0, i);
    ASSERT_GE(b.top, 0);
    ASSERT_GE(b.left, 0);
    ASSERT_GE(b.width, 1);
    ASSERT_GE(b.height, 1);
    ASSERT_LE(b.top + b.height, H);
    ASSERT_LE(b.left + b.width, W);
    const double scale = static_cast<double>(b.width) * b.height / (W * H);
    const double ratio = static_cast<double>(b.width) / b.height;
    // w and h are rounded to integers: allow a pixel of slack on the drawn area and ratio.
    EXPECT_GE(scale, 0.08 * (1 - 2.0 / 24)) << i;
    EXPECT_GE(ratio, 0.75 * (1 - 2.0 / 24)) << i;
    EXPECT_LE(ratio, 4.0 / 3 * (1 + 2.0 / 24)) << i;
    min_scale = std::min(min_scale, scale);
    max_scale = std::max(max_scale, scale);
    distinct.insert({b.top, b.left, b.height, b.width});
    // A pure function of (seed, epoch, index).
    const CropBox again = random_resized_crop_box(W, H, t, 0, i);
    ASSERT_EQ(again.top, b.top);
    ASSERT_EQ(again.width, b.width);
  }
  EXPECT_LT(min_scale, 0.12);
  EXPECT_GT(max_scale, 0.9);
  EXPECT_GT(distinct.size(), 1900u);
  // Another epoch or seed gives other boxes.
  int same = 0;
  for (int i = 0; i < 100; ++i) {
    const CropBox a = random_resized_crop_box(W, H, t, 0, i), b = random_resized_crop_box(W, H, t, 1, i);
    const CropBox c = random_resized_crop_box(W, H, Transform::torchvision_train(8), 0, i);
    same += (a.top == b.top && a.left == b.left && a.width == b.width) +
            (a.top == c.top && a.left == c.left && a.width == c.width);
  }
  EXPECT_LT(same, 5);
}

TEST(DataTransform, RandomResizedCropFallbackForExtremeImages) {
  // A 2 x 300 strip: no draw fits 10 times in a row, so torchvision's fallback is used: the
  // full width and h = round(w / min ratio), centred.
  Transform t = Transform::torchvision_train(1);
  t.scale_min = 0.9;
  const CropBox b = random_resized_crop_box(2, 300, t, 0, 0);
  EXPECT_EQ(b.width, 2);
  EXPECT_EQ(b.height, 3);  // round(2 / 0.75) = round(2.67)
  EXPECT_EQ(b.top, (300 - 3) / 2);
  EXPECT_EQ(b.left, 0);
}

TEST(DataTransform, TrainTransformIsDeterministicAndFlips) {
  const Image img = gradient_image(120, 90, 3, 3);
  const Transform t = Transform::torchvision_train(42);
  const auto a = run(t, img, {3, 32}, 2, 17), b = run(t, img, {3, 32}, 2, 17),
             c = run(t, img, {3, 32}, 3, 17);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (const float v : a) {
    ASSERT_GE(v, -1.0f);
    ASSERT_LE(v, 1.0f);
  }
  // Flip only: every output equals the eval output or its mirror, and both happen.
  Transform f;
  f.hflip = true;
  f.seed = 5;
  const auto plain = run(Transform::eval(), img, {3, 32});
  int flipped = 0, kept = 0;
  for (int i = 0; i < 64; ++i) {
    const auto o = run(f, img, {3, 32}, 0, i);
    if (o == plain) {
      ++kept;
      continue;
    }
    for (int c2 = 0; c2 < 3; ++c2)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) ASSERT_EQ(at(o, 32, c2, y, x), at(plain, 32, c2, y, 31 - x));
    ++flipped;
  }
  EXPECT_GT(flipped, 16);
  EXPECT_GT(kept, 16);
}

TEST(DataTransform, ShorterSideJitterCropsAnSxSWindow) {
  const Image img = gradient_image(80, 60, 3, 4);
  Transform t = tv_eval();
  t.crop = CropMode::RandomShorterSide;
  t.seed = 3;
  std::set<std::vector<float>> outs;
  for (int i = 0; i < 20; ++i) {
    const auto o = run(t, img, {3, 32}, 0, i);
    EXPECT_EQ(o, run(t, img, {3, 32}, 0, i));
    outs.insert(o);
  }
  EXPECT_GT(outs.size(), 10u);
  // jitter 1 and an image already at S: the shorter side stays S, so the crop is a plain window.
  t.jitter = 1.0;
  const Image small = gradient_image(40, 32, 3, 5);
  const auto o = run(t, small, {3, 32}, 0, 0);
  bool found = false;
  for (int left = 0; left <= 8 && !found; ++left) {
    bool eq = true;
    for (int y = 0; y < 32 && eq; ++y)
      for (int x = 0; x < 32 && eq; ++x)
        eq = at(o, 32, 0, y, x) == static_cast<float>(small.at(y, x + left, 0)) / 127.5f - 1.0f;
    found = eq;
  }
  EXPECT_TRUE(found);
}

TEST(DataTransform, ValidationAndDescription) {
  Transform t = Transform::torchvision_train(1);
  t.scale_min = 0;
  EXPECT_THROW(t.validate(), ArgumentError);
  t = Transform::torchvision_train(1);
  t.ratio_min = 2;
  EXPECT_THROW(t.validate(), ArgumentError);
  t = Transform::torchvision_train(1);
  t.jitter = 0.5;
  const Image img = gradient_image(8, 8, 3, 1);
  EXPECT_THROW(run(t, img, {3, 4}), ArgumentError);
  EXPECT_NE(tv_eval().str().find("bicubic"), std::string::npos);
  EXPECT_NE(Transform::eval().str().find("center_crop_arr"), std::string::npos);
  EXPECT_NE(Transform::adm_train(3).str().find("random_crop_arr"), std::string::npos);
  // The random resized crop is torchvision's only; crop fractions must be ordered in (0, 1].
  t = Transform::adm_train(1);
  t.crop = CropMode::RandomResized;
  EXPECT_THROW(t.validate(), ArgumentError);
  t = Transform::adm_train(1);
  t.min_crop_frac = 0.9;
  t.max_crop_frac = 0.8;
  EXPECT_THROW(t.validate(), ArgumentError);
  EXPECT_EQ(parse_preprocess("adm"), Preprocess::Adm);
  EXPECT_EQ(parse_preprocess("torchvision"), Preprocess::Torchvision);
  EXPECT_THROW(parse_preprocess("pil"), ArgumentError);
  EXPECT_NE(Transform::torchvision_train(9).str().find("seed 9"), std::string::npos);
  EXPECT_FALSE(tv_eval().random());
  EXPECT_TRUE(Transform::torchvision_train(0).random());
}

TEST(DataTransformAdm, ResizedSizeHalvesThenRoundsLikePython) {
  // No halving (300 < 512): 451 * 256 / 300 = 384.85 -> 385.
  EXPECT_EQ(adm_resized_size(451, 300, 256), (std::pair{385, 256}));
  // 600 x 400 to 64: BOX-halved to 300 x 200, then 150 x 100 (100 < 128 stops), then x 0.64.
  EXPECT_EQ(adm_resized_size(600, 400, 64), (std::pair{96, 64}));
  // Python's round is half to even: 5 * 1.5 = 7.5 -> 8, 7 * 1.5 = 10.5 -> 10.
  EXPECT_EQ(adm_resized_size(5, 2, 3), (std::pair{8, 3}));
  EXPECT_EQ(adm_resized_size(7, 2, 3), (std::pair{10, 3}));
  // Odd sides halve with floor division: 1001 x 129 -> 500 x 64 -> 250 x 32 (32 < 64 stops); scale 1.
  EXPECT_EQ(adm_resized_size(1001, 129, 32), (std::pair{250, 32}));
  EXPECT_THROW(adm_resized_size(0, 5, 3), ArgumentError);
}

TEST(DataTransformAdm, CentreCropOffsetsAreFloored) {
  // 35 x 32 at S = 32: no resize; center_crop_arr's offset is (35 - 32) // 2 = 1 (torchvision's
  // round(1.5) = 2).
  const Image img = gradient_image(35, 32, 3, 6);
  const auto adm = run(Transform::eval(), img, {3, 32});
  const auto tv = run(tv_eval(), img, {3, 32});
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x) {
      ASSERT_EQ(at(adm, 32, 0, y, x), static_cast<float>(img.at(y, x + 1, 0)) / 127.5f - 1.0f);
      ASSERT_EQ(at(tv, 32, 0, y, x), static_cast<float>(img.at(y, x + 2, 0)) / 127.5f - 1.0f);
    }
}

TEST(DataTransformAdm, CentreCropEqualsHalvingResizeAndCrop) {
  // 300 x 200 at S = 64: one BOX halving (200 >= 128) to 150 x 100 (100 < 128 stops), then
  // bicubic to 96 x 64 and the central 64 x 64 from x = 16.
  const Image img = gradient_image(300, 200, 3, 7);
  const auto out = run(Transform::eval(), img, {3, 64});
  const Image half = resize(img, 150, 100, ResampleFilter::Box);
  const Image full = resize(half, 96, 64, ResampleFilter::Bicubic);
  EXPECT_EQ(adm_resize(img, 64).samples, full.samples);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x)
      for (int c = 0; c < 3; ++c)
        ASSERT_EQ(at(out, 64, c, y, x), static_cast<float>(full.at(y, x + 16, c)) / 127.5f - 1.0f);
}

TEST(DataTransformAdm, SixteenBitImagesAreReadAsPilReadsThem) {
  // RGB(A) and grey+alpha: the high byte; grey (PIL mode "I"): clipped to 255 by convert.
  Image rgb = Image::blank(2, 1, 3, 16);
  rgb.samples = {65535, 256, 255, 0, 1000, 40000};
  EXPECT_EQ(to_pil_8bit(rgb).samples, (std::vector<std::uint16_t>{255, 1, 0, 0, 3, 156}));
  EXPECT_EQ(to_pil_8bit(rgb).depth, 8);
  Image grey = Image::blank(3, 1, 1, 16);
  grey.samples = {100, 255, 60000};
  EXPECT_EQ(to_pil_8bit(grey).samples, (std::vector<std::uint16_t>{100, 255, 255}));
  const auto out = run(Transform::eval(), grey, {1, 1});  // 3 x 1 -> 3 x 1, centre pixel
  EXPECT_EQ(out[0], 1.0f);
  Image eight = Image::blank(2, 2, 1);
  EXPECT_EQ(to_pil_8bit(eight).samples, eight.samples);
}

TEST(DataTransformAdm, RandomCropDrawsSizesInRangeAndIsAPureFunctionOfSeedCopyAndSample) {
  // random_crop_arr at S = 32: the shorter side in [ceil(32 / 1.0), ceil(32 / 0.8)] = [32, 40]; the
  // result is a 32 x 32 window of adm_resize(img, side) for one such side.
  const Image img = gradient_image(90, 70, 3, 8);
  Transform t = Transform::adm_train(5);
  t.hflip = false;
  std::set<int> sides;
  std::set<std::vector<float>> outs;
  for (int i = 0; i < 40; ++i) {
    const auto o = run(t, img, {3, 32}, 0, i);
    ASSERT_EQ(o, run(t, img, {3, 32}, 0, i));
    outs.insert(o);
    int found = 0;
    for (int side = 32; side <= 40 && !found; ++side) {
      const Image r = adm_resize(img, side);
      for (int top = 0; top + 32 <= r.height && !found; ++top)
        for (int left = 0; left + 32 <= r.width && !found; ++left) {
          bool eq = true;
          for (int y = 0; y < 32 && eq; ++y)
            for (int x = 0; x < 32 && eq; ++x)
              eq = at(o, 32, 1, y, x) == static_cast<float>(r.at(y + top, x + left, 1)) / 127.5f - 1.0f;
          if (eq) found = side;
        }
    }
    ASSERT_NE(found, 0) << "sample " << i << " is no 32x32 window of any allowed size";
    sides.insert(found);
  }
  EXPECT_GE(sides.size(), 5u);
  EXPECT_GT(outs.size(), 30u);
  // Another copy (epoch) or seed draws other crops.
  EXPECT_NE(run(t, img, {3, 32}, 1, 0), run(t, img, {3, 32}, 0, 0));
  EXPECT_NE(run(Transform::adm_train(6), img, {3, 32}, 0, 3),
            run(Transform::adm_train(5), img, {3, 32}, 0, 3));
}

TEST(DataInputSpec, FromShape) {
  EXPECT_EQ(InputSpec::from_shape(Shape{1, 3, 32, 32}), (InputSpec{3, 32}));
  EXPECT_EQ(InputSpec::from_shape(Shape{1, 32, 32}), (InputSpec{1, 32}));
  EXPECT_THROW(InputSpec::from_shape(Shape{2, 3, 32, 32}), ArgumentError);
  EXPECT_THROW(InputSpec::from_shape(Shape{1, 3, 32, 16}), ArgumentError);
  EXPECT_THROW(InputSpec::from_shape(Shape{32, 32}), ArgumentError);
  EXPECT_EQ((InputSpec{3, 256}).str(), "3x256x256");
}
