#pragma once
// From a decoded image to the model's input: channel conversion, geometry (resize and crop,
// optionally random) and scaling of 8-bit values v to v / 127.5 - 1. Two references, chosen by
// Transform::preprocess (docs/cli.md, "Preprocessing", has the reference code of each):
//  - Preprocess::Adm (the default): guided-diffusion's image_datasets.py, which the paper's code
//    and ADM's training use. PIL's convert("RGB"/"L") (16-bit PNGs as PIL reads them: RGB(A)
//    keeps the high byte, grey is clipped to 255), then center_crop_arr: while the shorter side
//    is >= 2 S, halve both sides (x // 2) with PIL's BOX filter; PIL BICUBIC to
//    round(x * S / shorter) on both sides (Python's round); the central S x S with floor
//    offsets. random_crop_arr is the same with S replaced by a random size and a random crop.
//  - Preprocess::Torchvision: Resize(S, BICUBIC) + CenterCrop(S) (long side truncated, offsets
//    rounded half to even) and RandomResizedCrop; 16-bit samples keep 16 bits (v / 32767.5 - 1).
// Resampling is PIL's, bit for bit (data/resize.hpp).
#include <cstdint>
#include <string>
#include <utility>

#include "diffprobe/data/image.hpp"
#include "diffprobe/data/input_spec.hpp"
#include "diffprobe/data/resize.hpp"

namespace diffprobe::data {

enum class Preprocess {
  Adm,          // guided-diffusion's center_crop_arr / random_crop_arr
  Torchvision,  // torchvision's Resize + CenterCrop / RandomResizedCrop
};
const char* preprocess_name(Preprocess p) noexcept;    // "adm", "torchvision"
Preprocess parse_preprocess(const std::string& name);  // ArgumentError when unknown

enum class CropMode {
  /// Evaluation. Adm: center_crop_arr. Torchvision: shorter side resized to S (longer side
  /// floor(S * long / short)), then the central S x S (offsets rounded half to even).
  Center,
  /// torchvision's RandomResizedCrop(S, scale, ratio) (Torchvision only): area fraction uniform
  /// in `scale`, log aspect ratio uniform in log(`ratio`), up to 10 tries, else the central crop
  /// of the clamped ratio; the crop is then resized to S x S.
  RandomResized,
  /// Training crops of the shorter-side kind. Adm: random_crop_arr (shorter side to a random
  /// integer in [ceil(S / max_crop_frac), ceil(S / min_crop_frac)], BOX halving first, PIL
  /// bicubic, a random S x S crop). Torchvision: shorter side to a random integer in
  /// [S, round(S * jitter)], then a random S x S crop.
  RandomShorterSide,
};

struct Transform {
  Preprocess preprocess = Preprocess::Adm;
  CropMode crop = CropMode::Center;
  bool hflip = false;                        // mirror with probability 1/2 (the random modes' companion)
  std::uint64_t seed = 0;                    // randomness is a pure function of (seed, epoch, sample index)
  double scale_min = 0.08, scale_max = 1.0;  // RandomResized
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;  // RandomResized
  double jitter = 1.25;                                 // RandomShorterSide, Torchvision
  double min_crop_frac = 0.8, max_crop_frac = 1.0;      // RandomShorterSide, Adm (random_crop_arr's)

  /// The evaluation transform of `preprocess` (the default: Adm's center_crop_arr).
  static Transform eval(Preprocess preprocess = Preprocess::Adm) {
    Transform t;
    t.preprocess = preprocess;
    return t;
  }
  /// The paper's training augmentation: random_crop_arr + horizontal flip (guided-diffusion's
  /// ImageDataset with random_crop=True, random_flip=True).
  static Transform adm_train(std::uint64_t seed) {
    Transform t;
    t.crop = CropMode::RandomShorterSide;
    t.hflip = true;
    t.seed = seed;
    return t;
  }
  /// torchvision-style training augmentation: RandomResizedCrop + horizontal flip.
  static Transform torchvision_train(std::uint64_t seed) {
    Transform t;
    t.preprocess = Preprocess::Torchvision;
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
  /// `epoch` and `index` key the randomness (ignored by the eval transform): the augmented copy
  /// k of sample i is apply(..., k, i).
  void apply(const Image& image, const InputSpec& spec, float* out, std::int64_t epoch = 0,
             std::int64_t index = 0) const;
  /// The same, stopping before the scaling: the 8-bit (Adm) or stored-depth image of S x S.
  Image geometry(const Image& image, const InputSpec& spec, std::int64_t epoch = 0,
                 std::int64_t index = 0) const;
};

/// PIL's 8-bit view of a decoded image, as Image.open + convert would see it: 16-bit RGB(A) and
/// grey+alpha keep the high byte (PIL reads them as 8-bit modes), 16-bit grey (mode "I") is
/// clipped to 255 when converted; 8-bit images are returned unchanged.
Image to_pil_8bit(const Image& image);

/// guided-diffusion's resize step (center_crop_arr / random_crop_arr before the crop) of an
/// 8-bit image: while min(w, h) >= 2 * shorter, halve to (w // 2, h // 2) with PIL's BOX; then
/// PIL BICUBIC to (round(w * s), round(h * s)), s = shorter / min(w, h), Python's round.
/// With a window, only that part of the final resize is computed (the same values).
Image adm_resize(const Image& image, int shorter, OutputWindow window = {});
/// The size adm_resize gives a w x h image: {width, height}.
std::pair<int, int> adm_resized_size(int width, int height, int shorter);

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
