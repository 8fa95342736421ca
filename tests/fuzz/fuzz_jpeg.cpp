// data::decode_image on JPEG seeds (libjpeg-turbo: markers, baseline / progressive, grey / RGB /
// CMYK, premature ends, the pixel limit after the header).
#include <cstddef>
#include <cstdint>
#include <span>

#include "diffprobe/data/image.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  // 4 Mpixel instead of the default 179 Mpixel: large valid images would only slow the campaign
  // (the default limit's bombs are unit tests, and in the regression corpus).
  data::set_max_image_pixels(std::uint64_t{1} << 22);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_only_diffprobe_errors([&] {
    const data::Image img = data::decode_image(std::span<const std::uint8_t>(data, size), "input");
    std::uint64_t h = 0;
    for (const auto v : img.samples) h = h * 31 + v;
    fuzz::keep(h);
  });
  return 0;
}
