#pragma once
// From a decoded image to the model's input: channel conversion, geometry (resize and crop,
// optionally random) and scaling of 8-bit values v to v / 127.5 - 1 (16-bit: v / 32767.5 - 1).
// Resampling is PIL's antialiased bicubic (data/resize.hpp), so eval preprocessing equals
// torchvision's Resize(S, BICUBIC) + CenterCrop(S) + ToTensor + Normalize(0.5, 0.5) on PIL images.
#include <cstdint>
#include <string>

#include "diffprobe/data/image.hpp"
#include "diffprobe/data/input_spec.hpp"

namespace diffprobe::data {

enum class CropMode {
  /// Evaluation: shorter side resized to S (longer side floor(S * long / short), as torchvision
  /// computes it), then the central S x S (offsets rounded half to even, like torchvision).
  Center,
  /// torchvision's RandomResizedCrop(S, scale, ratio): area fraction uniform in `scale`,
  /// log aspect ratio uniform in log(`ratio`), up to 10 tries, else the central crop of the
  /// clamped ratio; the crop is then resized to S x S.
  RandomResized,
  /// The paper's released training crop: shorter side resized to a random integer in
  /// [S, round(S * jitter)] (256..320 for S = 256), then a random S x S crop.
  RandomShorterSide,
};

struct Transform {
  CropMode crop = CropMode::Center;
  bool hflip = false;                        // mirror with probability 1/2 (the random modes' companion)
  std::uint64_t seed = 0;                    // randomness is a pure function of (seed, epoch, sample index)
  double scale_min = 0.08, scale_max = 1.0;  // RandomResized
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;  // RandomResized
  double jitter = 1.25;                                 // RandomShorterSide

  /// The evaluation transform (the default).
  static Transform eval() { return {}; }
  /// torchvision-style training augmentation: RandomResizedCrop + horizontal flip.
  static Transform train(std::uint64_t seed) {
    Transform t;
    t.crop = CropMode::RandomResized;
    t.hflip = true;
    t.seed = seed;
    return t;
  }
  bool random() const noexcept { return crop != CropMode::Center || hflip; }
  /// ArgumentError for out-of-range parameters.
  void validate() const;
  /// A one-line description for feature-file metadata.
  std::string str() const;

  /// Applies the transform to one image; writes spec.channels * S * S floats (CHW) to `out`.
  /// `epoch` and `index` key the randomness (ignored by the eval transform).
  void apply(const Image& image, const InputSpec& spec, float* out, std::int64_t epoch = 0,
             std::int64_t index = 0) const;
};

/// A source rectangle.
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};

/// The source rectangle the RandomResized mode takes from a width x height image for
/// (epoch, index): torchvision's get_params with our counter-based random numbers.
CropBox random_resized_crop_box(int width, int height, const Transform& transform, std::int64_t epoch,
                                std::int64_t index);

/// Resized size of the shorter-side rule: {width, height} with the shorter side = `shorter`.
std::pair<int, int> shorter_side_size(int width, int height, int shorter);

}  // namespace diffprobe::data
