#pragma once
// Decoded images as the files hold them (8 or 16 bits per sample, 1-4 channels), read from
// PNG (libpng) and JPEG (libjpeg-turbo), and written back for inspection.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace diffprobe::data {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;  // 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA
  int depth = 8;     // bits per sample: 8 or 16
  /// Row-major, channels interleaved: sample (y, x, c) is at (y * width + x) * channels + c.
  std::vector<std::uint16_t> samples;

  static Image blank(int width, int height, int channels, int depth = 8);
  std::uint16_t at(int y, int x, int c) const {
    return samples[(static_cast<std::size_t>(y) * static_cast<std::size_t>(width) +
                    static_cast<std::size_t>(x)) *
                       static_cast<std::size_t>(channels) +
                   static_cast<std::size_t>(c)];
  }
  std::uint16_t& at(int y, int x, int c) {
    return samples[(static_cast<std::size_t>(y) * static_cast<std::size_t>(width) +
                    static_cast<std::size_t>(x)) *
                       static_cast<std::size_t>(channels) +
                   static_cast<std::size_t>(c)];
  }
  int max_value() const noexcept { return depth == 16 ? 65535 : 255; }
};

enum class ImageFormat { Png, Jpeg, Unknown };

/// Sniffs the format from the first bytes (PNG signature, JPEG SOI marker).
ImageFormat detect_image_format(std::span<const std::uint8_t> bytes) noexcept;

/// Decodes a PNG or JPEG held in memory. `name` names the source in errors. What comes back:
///  - PNG: palette images expanded to RGB(A), grey below 8 bits scaled to 8 bits (as PIL does),
///    a tRNS chunk becomes an alpha channel, 16-bit samples are kept (no gamma handling: PIL
///    ignores gAMA too).
///  - JPEG: grey or RGB with libjpeg's default (ISLOW DCT, fancy upsampling), like PIL;
///    CMYK/YCCK files are converted to RGB with PIL's formula (Adobe-inverted CMYK assumed).
///    Data that ends early (a premature end of file or of a data segment) is an error, not grey
///    padding.
/// FormatError (naming the source) for corrupt or truncated data, UnsupportedError for other
/// formats.
Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name);

/// Decoding refuses (FormatError) images of more pixels than this, checked on the header before
/// anything is allocated: a few bytes of header could otherwise ask for gigabytes (decompression
/// bombs). Default 178,956,970, PIL's DecompressionBombError threshold (2 x MAX_IMAGE_PIXELS);
/// 0 lifts it (2^31 samples stay the hard bound). Process-wide and thread-safe.
void set_max_image_pixels(std::uint64_t pixels) noexcept;
std::uint64_t max_image_pixels() noexcept;

/// Reads and decodes a file (IoError when it cannot be read).
Image read_image(const std::filesystem::path& path);

/// Writes a PNG (1-4 channels, 8 or 16 bits) atomically.
void write_png(const std::filesystem::path& path, const Image& image);
/// Writes a baseline JPEG (grey or RGB, 8 bits; quality 1-100) atomically.
void write_jpeg(const std::filesystem::path& path, const Image& image, int quality = 95);

/// The rectangle [x, x + w) x [y, y + h) of `image` (ArgumentError when outside it).
Image crop(const Image& image, int x, int y, int w, int h);
/// Mirrors left-right.
Image flip_horizontal(const Image& image);

/// Converts to `channels` (1 or 3) the way PIL's Image.convert("L" / "RGB") does for 8 bits:
/// alpha is dropped (not composited), grey is replicated, RGB -> L uses ITU-R 601-2 luma
/// (R*19595 + G*38470 + B*7471 + 0x8000) >> 16. 16-bit images keep 16 bits (luma rounded).
Image convert_channels(const Image& image, int channels);

}  // namespace diffprobe::data
