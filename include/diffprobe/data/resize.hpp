#pragma once
// Resampling that reproduces PIL's Image.resize(size, Image.BICUBIC) (what torchvision's Resize /
// RandomResizedCrop and guided-diffusion's center_crop_arr call on PIL images) and
// Image.resize(size, Image.BOX) (center_crop_arr's halving of large images):
//  - the cubic convolution kernel with a = -0.5 and support 2 (BOX: 1 on (-0.5, 0.5], support
//    0.5), stretched by the downscale factor (so downscaling low-pass filters: "antialias"),
//    weights normalised to sum 1 per pixel;
//  - two separable passes, horizontal first, each over only the source rows it needs;
//  - 8-bit images: PIL's fixed-point arithmetic (22 fractional bits, round half up) with the
//    result clipped to [0, 255] after EACH pass, so outputs are bit-identical to PIL's;
//  - 16-bit images: PIL's float ("F" mode) arithmetic (double weights, a float32 intermediate),
//    the result rounded and clamped to [0, 65535].
#include "diffprobe/data/image.hpp"

namespace diffprobe::data {

/// Output pixels [x, x + w) x [y, y + h) of `src` resized to `width` x `height`: the same
/// values as resizing the whole image and then cropping, without computing what is cropped.
struct OutputWindow {
  int x = 0, y = 0, w = -1, h = -1;  // w, h < 0: up to the right / bottom edge
};

enum class ResampleFilter { Bicubic, Box };

/// ArgumentError for non-positive sizes or a window outside the output.
Image resize(const Image& src, int width, int height, ResampleFilter filter, OutputWindow window = {});
inline Image resize_bicubic(const Image& src, int width, int height, OutputWindow window = {}) {
  return resize(src, width, height, ResampleFilter::Bicubic, window);
}

}  // namespace diffprobe::data
