#include "diffprobe/data/transform.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/resize.hpp"
#include "diffprobe/diffusion/counter_noise.hpp"

namespace diffprobe::data {
namespace {

// Uniform numbers for one (seed, epoch, sample): Philox4x32-10 on a counter of (sample, epoch,
// block), so augmentation never depends on batching, threads or the order samples are read.
class AugmentRng {
 public:
  AugmentRng(std::uint64_t seed, std::int64_t epoch, std::int64_t index) {
    const auto e = static_cast<std::uint64_t>(epoch), i = static_cast<std::uint64_t>(index);
    // The key differs from the diffusion noise's ("aug" tag) so the two streams are unrelated.
    key_[0] = static_cast<std::uint32_t>(seed);
    key_[1] = static_cast<std::uint32_t>(seed >> 32) ^ static_cast<std::uint32_t>(e >> 32) ^ 0x61756721u;
    ctr_[0] = static_cast<std::uint32_t>(i);
    ctr_[1] = static_cast<std::uint32_t>(i >> 32);
    ctr_[2] = static_cast<std::uint32_t>(e);
    ctr_[3] = 0;
  }
  std::uint32_t next_u32() {
    if (pos_ == 4) {
      philox4x32(ctr_, key_, buf_);
      ++ctr_[3];
      pos_ = 0;
    }
    return buf_[pos_++];
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() {
    const std::uint64_t a = next_u32() >> 5, b = next_u32() >> 6;
    return static_cast<double>(a * 67108864u + b) * (1.0 / 9007199254740992.0);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [lo, hi].
  int integer(int lo, int hi) {
    return lo + static_cast<int>(std::floor(uniform() * (static_cast<double>(hi) - lo + 1)));
  }

 private:
  std::uint32_t key_[2];
  std::uint32_t ctr_[4];
  std::uint32_t buf_[4] = {};
  int pos_ = 4;
};

// Python's round(): half to even (std::nearbyint in the default rounding mode).
int round_half_even(double v) { return static_cast<int>(std::nearbyint(v)); }

// Python's round() of x * scale for the (possibly halved) side x.
int python_round(double v) { return round_half_even(v); }

void scale_to_unit(const Image& img, int channels, int size, float* out) {
  const std::size_t plane = static_cast<std::size_t>(size) * static_cast<std::size_t>(size);
  const float div = img.depth == 16 ? 32767.5f : 127.5f;
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < channels; ++c)
        out[static_cast<std::size_t>(c) * plane +
            static_cast<std::size_t>(y) * static_cast<std::size_t>(size) + static_cast<std::size_t>(x)] =
            static_cast<float>(img.at(y, x, c)) / div - 1.0f;
}

}  // namespace

const char* preprocess_name(Preprocess p) noexcept { return p == Preprocess::Adm ? "adm" : "torchvision"; }

Preprocess parse_preprocess(const std::string& name) {
  if (name == "adm") return Preprocess::Adm;
  if (name == "torchvision") return Preprocess::Torchvision;
  throw ArgumentError("preprocess", "unknown preprocessing '" + name + "' (adm or torchvision)");
}

Image to_pil_8bit(const Image& image) {
  if (image.depth != 16) return image;
  Image out = Image::blank(image.width, image.height, image.channels, 8);
  if (image.channels == 1) {
    // PIL opens a 16-bit grey PNG as mode "I"; convert("L"/"RGB") clips it to 255.
    for (std::size_t i = 0; i < image.samples.size(); ++i)
      out.samples[i] = std::min<std::uint16_t>(image.samples[i], 255);
  } else {
    // PIL reads 16-bit LA/RGB/RGBA PNGs as 8-bit modes, keeping the high byte.
    for (std::size_t i = 0; i < image.samples.size(); ++i)
      out.samples[i] = static_cast<std::uint16_t>(image.samples[i] >> 8);
  }
  return out;
}

std::pair<int, int> adm_resized_size(int width, int height, int shorter) {
  if (width < 1 || height < 1 || shorter < 1)
    throw ArgumentError("adm_resized_size",
                        fmt::format("sizes must be positive: {}x{} -> {}", width, height, shorter));
  while (std::min(width, height) >= 2 * shorter) {
    width /= 2;
    height /= 2;
  }
  const double scale = static_cast<double>(shorter) / std::min(width, height);
  return {python_round(width * scale), python_round(height * scale)};
}

Image adm_resize(const Image& image, int shorter, OutputWindow window) {
  if (shorter < 1)
    throw ArgumentError("adm_resize", fmt::format("shorter side {} must be positive", shorter));
  if (image.depth != 8)
    throw ArgumentError("adm_resize", "takes 8-bit images (to_pil_8bit converts as PIL does)");
  Image img = image;
  // center_crop_arr's "reducing_gap by hand": BOX halving at powers of two first.
  while (std::min(img.width, img.height) >= 2 * shorter)
    img = resize(img, img.width / 2, img.height / 2, ResampleFilter::Box);
  const double scale = static_cast<double>(shorter) / std::min(img.width, img.height);
  return resize(img, python_round(img.width * scale), python_round(img.height * scale),
                ResampleFilter::Bicubic, window);
}

void Transform::validate() const {
  const char* where = "Transform";
  if (!(scale_min > 0 && scale_min <= scale_max && scale_max <= 1.0))
    throw ArgumentError(
        where, fmt::format("scale range ({}, {}) must satisfy 0 < min <= max <= 1", scale_min, scale_max));
  if (!(ratio_min > 0 && ratio_min <= ratio_max && std::isfinite(ratio_max)))
    throw ArgumentError(
        where, fmt::format("ratio range ({}, {}) must satisfy 0 < min <= max", ratio_min, ratio_max));
  if (!(jitter >= 1.0 && jitter <= 8.0))
    throw ArgumentError(where, fmt::format("jitter {} must be in [1, 8]", jitter));
  if (!(min_crop_frac >= 0.125 && min_crop_frac <= max_crop_frac && max_crop_frac <= 1.0))
    throw ArgumentError(where, fmt::format("crop fractions ({}, {}) must satisfy 1/8 <= min <= max <= 1",
                                           min_crop_frac, max_crop_frac));
  if (preprocess == Preprocess::Adm && crop == CropMode::RandomResized)
    throw ArgumentError(where,
                        "the random resized crop is torchvision's; with adm preprocessing use the "
                        "shorter-side crop (random_crop_arr)");
}

std::string Transform::str() const {
  std::string s = fmt::format("preprocess {}: ", preprocess_name(preprocess));
  if (preprocess == Preprocess::Adm) {
    s += crop == CropMode::Center
             ? "center_crop_arr (PIL convert, BOX halving while shorter >= 2S, PIL bicubic to "
               "round(side*S/shorter), floor-centred SxS crop)"
             : fmt::format(
                   "random_crop_arr (shorter side to a random size in [ceil(S/{}), ceil(S/{})], BOX "
                   "halving, PIL bicubic, random SxS crop)",
                   max_crop_frac, min_crop_frac);
    if (hflip) s += ", random horizontal flip";
    if (random()) s += fmt::format(", seed {} (per copy and sample)", seed);
    return s;
  }
  switch (crop) {
    case CropMode::Center:
      s += "resize shorter side to S (PIL bicubic a=-0.5, antialiased), centre crop SxS";
      break;
    case CropMode::RandomResized:
      s += fmt::format("random resized crop (scale [{}, {}], ratio [{:.4f}, {:.4f}], PIL bicubic) to SxS",
                       scale_min, scale_max, ratio_min, ratio_max);
      break;
    case CropMode::RandomShorterSide:
      s += fmt::format("resize shorter side to a random size in [S, {}S] (PIL bicubic), random SxS crop",
                       jitter);
      break;
  }
  if (hflip) s += ", random horizontal flip";
  if (random()) s += fmt::format(", seed {} (per epoch and sample)", seed);
  return s;
}

std::pair<int, int> shorter_side_size(int width, int height, int shorter) {
  if (width < 1 || height < 1 || shorter < 1)
    throw ArgumentError("shorter_side_size",
                        fmt::format("sizes must be positive: {}x{} -> {}", width, height, shorter));
  // torchvision: new_long = int(new_short * long / short), in double precision.
  if (width <= height) return {shorter, static_cast<int>(static_cast<double>(shorter) * height / width)};
  return {static_cast<int>(static_cast<double>(shorter) * width / height), shorter};
}

CropBox random_resized_crop_box(int width, int height, const Transform& t, std::int64_t epoch,
                                std::int64_t index) {
  AugmentRng rng(t.seed, epoch, index);
  const double area = static_cast<double>(width) * height;
  const double log_lo = std::log(t.ratio_min), log_hi = std::log(t.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * rng.uniform(t.scale_min, t.scale_max);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    const int w = round_half_even(std::sqrt(target * aspect));
    const int h = round_half_even(std::sqrt(target / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int top = rng.integer(0, height - h);
      const int left = rng.integer(0, width - w);
      return {top, left, h, w};
    }
  }
  // torchvision's fallback: the central crop with the ratio clamped into range.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < t.ratio_min) {
    h = round_half_even(w / t.ratio_min);
  } else if (in_ratio > t.ratio_max) {
    w = round_half_even(h * t.ratio_max);
  }
  h = std::clamp(h, 1, height);
  w = std::clamp(w, 1, width);
  return {(height - h) / 2, (width - w) / 2, h, w};
}

Image Transform::geometry(const Image& image, const InputSpec& spec, std::int64_t epoch,
                          std::int64_t index) const {
  spec.validate("Transform::apply");
  validate();
  const int S = spec.size;
  Image res;
  if (preprocess == Preprocess::Adm) {
    // guided-diffusion: pil_image.convert("RGB") (here "L" for grey models) before any resize.
    const Image img = convert_channels(to_pil_8bit(image), spec.channels);
    if (crop == CropMode::Center) {
      const auto [w, h] = adm_resized_size(img.width, img.height, S);
      res = adm_resize(img, S, {(w - S) / 2, (h - S) / 2, S, S});
    } else {
      // random_crop_arr: smaller_dim_size = randrange(ceil(S / max), ceil(S / min) + 1), then
      // crop_y, crop_x = randrange(h - S + 1), randrange(w - S + 1): drawn in that order.
      AugmentRng rng(seed, epoch, index ^ (std::int64_t{1} << 62));
      const int lo = static_cast<int>(std::ceil(S / max_crop_frac));
      const int hi = static_cast<int>(std::ceil(S / min_crop_frac));
      const int side = rng.integer(lo, hi);
      const auto [w, h] = adm_resized_size(img.width, img.height, side);
      const int top = rng.integer(0, h - S), left = rng.integer(0, w - S);
      res = adm_resize(img, side, {left, top, S, S});
    }
  } else {
    const Image img = convert_channels(image, spec.channels);
    switch (crop) {
      case CropMode::Center: {
        const auto [w, h] = shorter_side_size(img.width, img.height, S);
        const int top = round_half_even((h - S) / 2.0), left = round_half_even((w - S) / 2.0);
        res = resize_bicubic(img, w, h, {left, top, S, S});
        break;
      }
      case CropMode::RandomResized: {
        const CropBox b = random_resized_crop_box(img.width, img.height, *this, epoch, index);
        res = resize_bicubic(data::crop(img, b.left, b.top, b.width, b.height), S, S);
        break;
      }
      case CropMode::RandomShorterSide: {
        // A stream apart from the crop-box one (index offset by 2^62) keeps the modes independent.
        AugmentRng rng(seed, epoch, index ^ (std::int64_t{1} << 62));
        const int side = rng.integer(S, static_cast<int>(std::lround(S * jitter)));
        const auto [w, h] = shorter_side_size(img.width, img.height, side);
        const int top = rng.integer(0, h - S), left = rng.integer(0, w - S);
        res = resize_bicubic(img, w, h, {left, top, S, S});
        break;
      }
    }
  }
  if (hflip) {
    // Its own counter block far from the crop's, so flipping does not shift the crop's numbers.
    AugmentRng rng(seed ^ 0x9e3779b97f4a7c15ull, epoch, index);
    if (rng.next_u32() & 1u) res = flip_horizontal(res);
  }
  return res;
}

void Transform::apply(const Image& image, const InputSpec& spec, float* out, std::int64_t epoch,
                      std::int64_t index) const {
  scale_to_unit(geometry(image, spec, epoch, index), spec.channels, spec.size, out);
}

}  // namespace diffprobe::data
