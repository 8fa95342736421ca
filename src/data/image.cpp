#include "diffprobe/data/image.hpp"

// clang-format off
#include <cstdio>   // jpeglib.h needs FILE and size_t first
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstring>
#include <fstream>
#include <limits>

#include "diffprobe/core/error.hpp"
#include "io/atomic_file.hpp"

// libpng and libjpeg report errors through longjmp. Each decoder keeps every object with a
// destructor in a state struct owned by the caller, and the function that calls setjmp holds
// only trivially destructible locals, so a longjmp never skips a destructor.

namespace diffprobe::data {
namespace {

// Decoded images above this many samples are refused whatever the pixel limit.
constexpr std::uint64_t kMaxSamples = std::uint64_t{1} << 31;
std::atomic<std::uint64_t> g_max_pixels{178956970};

// Empty when a w x h x c image may be decoded, else why not (written into `why`).
bool too_big(std::uint64_t w, std::uint64_t h, std::uint64_t c, char* why, std::size_t n) {
  const std::uint64_t limit = g_max_pixels.load(std::memory_order_relaxed);
  if (w == 0 || h == 0) {
    std::snprintf(why, n, "image of %llux%llu pixels is empty", static_cast<unsigned long long>(w),
                  static_cast<unsigned long long>(h));
    return true;
  }
  if ((limit > 0 && w * h > limit) || w * h * c > kMaxSamples) {
    std::snprintf(
        why, n,
        "image of %llux%llu pixels is larger than the limit of %llu pixels (a decompression "
        "bomb? data::set_max_image_pixels raises it)",
        static_cast<unsigned long long>(w), static_cast<unsigned long long>(h),
        static_cast<unsigned long long>(limit > 0 ? std::min(limit, kMaxSamples / c) : kMaxSamples / c));
    return true;
  }
  return false;
}

// ---- PNG ----------------------------------------------------------------------------------

struct PngReadState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  std::span<const std::uint8_t> data;
  std::size_t pos = 0;
  char error[256] = {};
  std::vector<std::uint8_t> raw;
  std::vector<png_bytep> rows;
  ~PngReadState() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* s = static_cast<PngReadState*>(png_get_error_ptr(png));
  std::snprintf(s->error, sizeof s->error, "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}  // PIL ignores libpng's warnings too

void png_read_fn(png_structp png, png_bytep out, png_size_t n) {
  auto* s = static_cast<PngReadState*>(png_get_io_ptr(png));
  if (n > s->data.size() - s->pos) png_error(png, "file is truncated");
  std::memcpy(out, s->data.data() + s->pos, n);
  s->pos += n;
}

// Returns false with s->error set on a libpng error.
bool png_decode_core(PngReadState* s, Image* img) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_set_read_fn(s->png, s, png_read_fn);
  png_read_info(s->png, s->info);
  const png_uint_32 width = png_get_image_width(s->png, s->info);
  const png_uint_32 height = png_get_image_height(s->png, s->info);
  const int bit_depth = png_get_bit_depth(s->png, s->info);
  const int color_type = png_get_color_type(s->png, s->info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(s->png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(s->png);
  if (png_get_valid(s->png, s->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(s->png);
  if (bit_depth == 16) png_set_swap(s->png);  // to host (little-endian) order
  png_set_interlace_handling(s->png);
  png_read_update_info(s->png, s->info);
  const int channels = png_get_channels(s->png, s->info);
  char why[256];
  if (too_big(width, height, static_cast<std::uint64_t>(channels), why, sizeof why)) png_error(s->png, why);
  const std::size_t rowbytes = png_get_rowbytes(s->png, s->info);
  s->raw.resize(rowbytes * height);
  s->rows.resize(height);
  for (png_uint_32 y = 0; y < height; ++y) s->rows[y] = s->raw.data() + y * rowbytes;
  png_read_image(s->png, s->rows.data());
  img->width = static_cast<int>(width);
  img->height = static_cast<int>(height);
  img->channels = channels;
  img->depth = bit_depth == 16 ? 16 : 8;
  return true;
}

Image decode_png(std::span<const std::uint8_t> bytes, const std::string& name) {
  PngReadState s;
  s.data = bytes;
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, png_error_fn, png_warning_fn);
  if (!s.png) throw FormatError(name, "libpng could not start");
  s.info = png_create_info_struct(s.png);
  if (!s.info) throw FormatError(name, "libpng could not start");
  Image img;
  if (!png_decode_core(&s, &img)) throw FormatError(name, std::string("corrupt PNG: ") + s.error);
  const std::size_t n = static_cast<std::size_t>(img.width) * static_cast<std::size_t>(img.height) *
                        static_cast<std::size_t>(img.channels);
  img.samples.resize(n);
  if (img.depth == 16) {
    std::memcpy(img.samples.data(), s.raw.data(), n * 2);
  } else {
    std::copy(s.raw.begin(), s.raw.begin() + static_cast<std::ptrdiff_t>(n), img.samples.begin());
  }
  return img;
}

struct PngWriteState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  char error[256] = {};
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> raw;
  std::vector<png_bytep> rows;
  ~PngWriteState() {
    if (png) png_destroy_write_struct(&png, info ? &info : nullptr);
  }
};

void png_write_error_fn(png_structp png, png_const_charp msg) {
  auto* s = static_cast<PngWriteState*>(png_get_error_ptr(png));
  std::snprintf(s->error, sizeof s->error, "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

void png_write_fn(png_structp png, png_bytep data, png_size_t n) {
  auto* s = static_cast<PngWriteState*>(png_get_io_ptr(png));
  s->out.insert(s->out.end(), data, data + n);
}

void png_flush_fn(png_structp) {}

bool png_encode_core(PngWriteState* s, const Image* img) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  static constexpr int kTypes[] = {PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                   PNG_COLOR_TYPE_RGB_ALPHA};
  png_set_write_fn(s->png, s, png_write_fn, png_flush_fn);
  png_set_IHDR(s->png, s->info, static_cast<png_uint_32>(img->width), static_cast<png_uint_32>(img->height),
               img->depth, kTypes[img->channels - 1], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(s->png, s->info);
  if (img->depth == 16) png_set_swap(s->png);
  png_write_image(s->png, s->rows.data());
  png_write_end(s->png, nullptr);
  return true;
}

// ---- JPEG ---------------------------------------------------------------------------------

struct JpegErrorMgr {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char error[JMSG_LENGTH_MAX] = {};
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorMgr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->error);
  std::longjmp(err->jump, 1);
}

// Warnings are tolerated (PIL does too), except data that ends early, at the end of the file or
// of a data segment: libjpeg would pad the image with grey and carry on, which would silently
// feed a broken image to the model (and let a few bytes claiming a huge image cost seconds).
void jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0 && (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_HIT_MARKER))
    jpeg_error_exit(cinfo);
}

void jpeg_output_message(j_common_ptr) {}

struct JpegReadState {
  jpeg_decompress_struct cinfo{};
  JpegErrorMgr err;
  bool created = false;
  std::vector<std::uint8_t> raw;
  ~JpegReadState() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

bool jpeg_decode_core(JpegReadState* s, std::span<const std::uint8_t> bytes, Image* img) {
  s->cinfo.err = jpeg_std_error(&s->err.pub);
  s->err.pub.error_exit = jpeg_error_exit;
  s->err.pub.emit_message = jpeg_emit_message;
  s->err.pub.output_message = jpeg_output_message;
  if (setjmp(s->err.jump)) return false;
  jpeg_create_decompress(&s->cinfo);
  s->created = true;
  jpeg_mem_src(&s->cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&s->cinfo, TRUE);
  if (too_big(s->cinfo.image_width, s->cinfo.image_height,
              static_cast<std::uint64_t>(s->cinfo.num_components), s->err.error, sizeof s->err.error))
    return false;  // before libjpeg allocates buffers for the claimed size
  // PIL picks the mode from the component count: 1 -> L, 3 -> RGB, 4 -> CMYK.
  switch (s->cinfo.num_components) {
    case 1: s->cinfo.out_color_space = JCS_GRAYSCALE; break;
    case 3: s->cinfo.out_color_space = JCS_RGB; break;
    case 4: s->cinfo.out_color_space = JCS_CMYK; break;
    default: {
      std::snprintf(s->err.error, sizeof s->err.error, "cannot handle %d-component images",
                    s->cinfo.num_components);
      return false;
    }
  }
  jpeg_start_decompress(&s->cinfo);
  const std::uint64_t w = s->cinfo.output_width, h = s->cinfo.output_height;
  const int c = s->cinfo.output_components;
  if (too_big(w, h, static_cast<std::uint64_t>(c), s->err.error, sizeof s->err.error)) return false;
  s->raw.resize(w * h * static_cast<std::uint64_t>(c));
  while (s->cinfo.output_scanline < s->cinfo.output_height) {
    JSAMPROW row =
        s->raw.data() + static_cast<std::size_t>(s->cinfo.output_scanline) * w * static_cast<std::size_t>(c);
    jpeg_read_scanlines(&s->cinfo, &row, 1);
  }
  jpeg_finish_decompress(&s->cinfo);
  img->width = static_cast<int>(w);
  img->height = static_cast<int>(h);
  img->channels = c;
  img->depth = 8;
  return true;
}

// PIL's MULDIV255 and cmyk2rgb (after undoing Adobe's inverted CMYK, as PIL always assumes).
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

Image decode_jpeg(std::span<const std::uint8_t> bytes, const std::string& name) {
  JpegReadState s;
  Image img;
  if (!jpeg_decode_core(&s, bytes, &img))
    throw FormatError(name, std::string("corrupt JPEG: ") + s.err.error);
  const std::size_t px = static_cast<std::size_t>(img.width) * static_cast<std::size_t>(img.height);
  if (img.channels == 4) {
    img.channels = 3;
    img.samples.resize(px * 3);
    for (std::size_t i = 0; i < px; ++i) {
      const std::uint8_t* p = &s.raw[i * 4];
      const int nk = p[3];  // 255 - k, with k = 255 - p[3] after inversion
      for (int ch = 0; ch < 3; ++ch) {
        const int v = 255 - p[ch];
        img.samples[i * 3 + static_cast<std::size_t>(ch)] =
            static_cast<std::uint16_t>(std::clamp(nk - muldiv255(v, nk), 0, 255));
      }
    }
  } else {
    img.samples.assign(s.raw.begin(), s.raw.end());
  }
  return img;
}

struct JpegWriteState {
  jpeg_compress_struct cinfo{};
  JpegErrorMgr err;
  bool created = false;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  std::vector<std::uint8_t> row;
  ~JpegWriteState() {
    if (created) jpeg_destroy_compress(&cinfo);
    std::free(buffer);  // jpeg_mem_dest allocates with malloc
  }
};

bool jpeg_encode_core(JpegWriteState* s, const Image* img, int quality) {
  s->cinfo.err = jpeg_std_error(&s->err.pub);
  s->err.pub.error_exit = jpeg_error_exit;
  s->err.pub.output_message = jpeg_output_message;
  if (setjmp(s->err.jump)) return false;
  jpeg_create_compress(&s->cinfo);
  s->created = true;
  jpeg_mem_dest(&s->cinfo, &s->buffer, &s->size);
  s->cinfo.image_width = static_cast<JDIMENSION>(img->width);
  s->cinfo.image_height = static_cast<JDIMENSION>(img->height);
  s->cinfo.input_components = img->channels;
  s->cinfo.in_color_space = img->channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&s->cinfo);
  jpeg_set_quality(&s->cinfo, quality, TRUE);
  jpeg_start_compress(&s->cinfo, TRUE);
  const std::size_t stride = static_cast<std::size_t>(img->width) * static_cast<std::size_t>(img->channels);
  s->row.resize(stride);
  while (s->cinfo.next_scanline < s->cinfo.image_height) {
    const std::size_t y = s->cinfo.next_scanline;
    for (std::size_t i = 0; i < stride; ++i)
      s->row[i] = static_cast<std::uint8_t>(img->samples[y * stride + i]);
    JSAMPROW r = s->row.data();
    jpeg_write_scanlines(&s->cinfo, &r, 1);
  }
  jpeg_finish_compress(&s->cinfo);
  return true;
}

void check_image(const Image& image, const char* where) {
  if (image.width < 1 || image.height < 1)
    throw ArgumentError(where,
                        "image is " + std::to_string(image.width) + "x" + std::to_string(image.height));
  if (image.channels < 1 || image.channels > 4)
    throw ArgumentError(where, "image has " + std::to_string(image.channels) + " channels (1-4 supported)");
  if (image.depth != 8 && image.depth != 16)
    throw ArgumentError(where, "image depth is " + std::to_string(image.depth) + " bits (8 or 16 supported)");
  const std::size_t n = static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height) *
                        static_cast<std::size_t>(image.channels);
  if (image.samples.size() != n)
    throw ArgumentError(where, "image holds " + std::to_string(image.samples.size()) +
                                   " samples, its size needs " + std::to_string(n));
}

void write_bytes(const std::filesystem::path& path, const void* data, std::size_t n) {
  io::detail::AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace

void set_max_image_pixels(std::uint64_t pixels) noexcept {
  g_max_pixels.store(pixels, std::memory_order_relaxed);
}
std::uint64_t max_image_pixels() noexcept { return g_max_pixels.load(std::memory_order_relaxed); }

Image Image::blank(int width, int height, int channels, int depth) {
  Image img;
  img.width = width;
  img.height = height;
  img.channels = channels;
  img.depth = depth;
  if (width < 1 || height < 1 || channels < 1 || channels > 4 || (depth != 8 && depth != 16))
    throw ArgumentError("Image::blank", "bad image geometry " + std::to_string(width) + "x" +
                                            std::to_string(height) + "x" + std::to_string(channels) + " at " +
                                            std::to_string(depth) + " bits");
  img.samples.assign(
      static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * static_cast<std::size_t>(channels),
      0);
  return img;
}

ImageFormat detect_image_format(std::span<const std::uint8_t> b) noexcept {
  static constexpr std::uint8_t kPng[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (b.size() >= 8 && std::memcmp(b.data(), kPng, 8) == 0) return ImageFormat::Png;
  if (b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return ImageFormat::Jpeg;
  return ImageFormat::Unknown;
}

Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name) {
  switch (detect_image_format(bytes)) {
    case ImageFormat::Png: return decode_png(bytes, name);
    case ImageFormat::Jpeg: return decode_jpeg(bytes, name);
    case ImageFormat::Unknown: break;
  }
  if (bytes.empty()) throw FormatError(name, "the file is empty");
  throw UnsupportedError(name, "neither a PNG nor a JPEG file (unrecognised first bytes)");
}

Image read_image(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw IoError(name, "no such file");
  if (!std::filesystem::is_regular_file(path, ec)) throw IoError(name, "not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(name, std::string("cannot open: ") + std::strerror(errno));
  std::vector<std::uint8_t> bytes;
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) throw IoError(name, "cannot read (not a regular file?)");
  in.seekg(0, std::ios::beg);
  bytes.resize(static_cast<std::size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) throw IoError(name, "read failed");
  return decode_image(bytes, name);
}

void write_png(const std::filesystem::path& path, const Image& image) {
  check_image(image, "write_png");
  PngWriteState s;
  s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &s, png_write_error_fn, png_warning_fn);
  if (!s.png) throw IoError(path.string(), "libpng could not start");
  s.info = png_create_info_struct(s.png);
  if (!s.info) throw IoError(path.string(), "libpng could not start");
  const std::size_t n = image.samples.size();
  const std::size_t bps = image.depth == 16 ? 2 : 1;
  s.raw.resize(n * bps);
  if (bps == 2) {
    std::memcpy(s.raw.data(), image.samples.data(), n * 2);
  } else {
    for (std::size_t i = 0; i < n; ++i)
      s.raw[i] = static_cast<std::uint8_t>(std::min<int>(image.samples[i], 255));
  }
  const std::size_t stride =
      static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.channels) * bps;
  s.rows.resize(static_cast<std::size_t>(image.height));
  for (std::size_t y = 0; y < s.rows.size(); ++y) s.rows[y] = s.raw.data() + y * stride;
  if (!png_encode_core(&s, &image))
    throw IoError(path.string(), std::string("PNG encoding failed: ") + s.error);
  write_bytes(path, s.out.data(), s.out.size());
}

void write_jpeg(const std::filesystem::path& path, const Image& image, int quality) {
  check_image(image, "write_jpeg");
  if (image.depth != 8 || (image.channels != 1 && image.channels != 3))
    throw ArgumentError("write_jpeg",
                        "JPEG takes 8-bit grey or RGB; convert the image first (" + path.string() + ")");
  if (quality < 1 || quality > 100)
    throw ArgumentError("write_jpeg", "quality must be in [1, 100], got " + std::to_string(quality));
  JpegWriteState s;
  if (!jpeg_encode_core(&s, &image, quality))
    throw IoError(path.string(), std::string("JPEG encoding failed: ") + s.err.error);
  write_bytes(path, s.buffer, s.size);
}

Image crop(const Image& image, int x, int y, int w, int h) {
  check_image(image, "crop");
  if (x < 0 || y < 0 || w < 1 || h < 1 || x > image.width - w || y > image.height - h)
    throw ArgumentError("crop", "rectangle " + std::to_string(w) + "x" + std::to_string(h) + " at (" +
                                    std::to_string(x) + ", " + std::to_string(y) + ") is not inside a " +
                                    std::to_string(image.width) + "x" + std::to_string(image.height) +
                                    " image");
  Image out = Image::blank(w, h, image.channels, image.depth);
  const std::size_t c = static_cast<std::size_t>(image.channels);
  for (int r = 0; r < h; ++r) {
    const auto* src =
        &image.samples[(static_cast<std::size_t>(y + r) * static_cast<std::size_t>(image.width) +
                        static_cast<std::size_t>(x)) *
                       c];
    std::copy(src, src + static_cast<std::size_t>(w) * c,
              &out.samples[static_cast<std::size_t>(r) * static_cast<std::size_t>(w) * c]);
  }
  return out;
}

Image flip_horizontal(const Image& image) {
  check_image(image, "flip_horizontal");
  Image out = image;
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < image.width; ++x)
      for (int c = 0; c < image.channels; ++c) out.at(y, x, c) = image.at(y, image.width - 1 - x, c);
  return out;
}

Image convert_channels(const Image& image, int channels) {
  check_image(image, "convert_channels");
  if (channels != 1 && channels != 3)
    throw UnsupportedError("convert_channels",
                           "images convert to 1 (grey) or 3 (RGB) channels, not " + std::to_string(channels));
  const int from = image.channels;
  if (from == channels) return image;
  Image out = Image::blank(image.width, image.height, channels, image.depth);
  const std::size_t px = static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height);
  const auto* in = image.samples.data();
  auto* o = out.samples.data();
  const std::size_t fc = static_cast<std::size_t>(from);
  for (std::size_t i = 0; i < px; ++i) {
    const std::uint16_t* p = in + i * fc;
    if (channels == 3) {
      if (from <= 2) {
        o[i * 3] = o[i * 3 + 1] = o[i * 3 + 2] = p[0];
      } else {
        o[i * 3] = p[0];
        o[i * 3 + 1] = p[1];
        o[i * 3 + 2] = p[2];
      }
    } else if (from <= 2) {
      o[i] = p[0];
    } else {  // PIL's L24: ITU-R 601-2 luma in 16.16 fixed point
      const std::uint64_t l =
          std::uint64_t{p[0]} * 19595 + std::uint64_t{p[1]} * 38470 + std::uint64_t{p[2]} * 7471 + 0x8000;
      o[i] = static_cast<std::uint16_t>(l >> 16);
    }
  }
  return out;
}

}  // namespace diffprobe::data
