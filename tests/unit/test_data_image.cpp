// Image decoding and encoding (PNG via libpng, JPEG via libjpeg-turbo), channel conversion,
// crop and flip. PNGs are also built by hand here (stored deflate blocks), so the decoder is
// checked against files no libpng wrote.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/image.hpp"

using namespace diffprobe;
using namespace diffprobe::data;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("diffprobe_test_data_image_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// ---- A minimal PNG encoder, independent of libpng --------------------------------------------
std::uint32_t crc32(const std::vector<std::uint8_t>& d, std::size_t from) {
  std::uint32_t c = 0xffffffffu;
  for (std::size_t i = from; i < d.size(); ++i) {
    c ^= d[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return ~c;
}
void be32(std::vector<std::uint8_t>& o, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) o.push_back(static_cast<std::uint8_t>(v >> s));
}
void chunk(std::vector<std::uint8_t>& png, const char* type, const std::vector<std::uint8_t>& data) {
  be32(png, static_cast<std::uint32_t>(data.size()));
  const std::size_t start = png.size();
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), data.begin(), data.end());
  be32(png, crc32(png, start));
}
// Raw scanlines (filter byte 0 each) -> zlib stream of stored blocks.
std::vector<std::uint8_t> zlib_stored(const std::vector<std::uint8_t>& raw) {
  std::vector<std::uint8_t> z = {0x78, 0x01};
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + n == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(static_cast<std::uint8_t>(n));
    z.push_back(static_cast<std::uint8_t>(n >> 8));
    z.push_back(static_cast<std::uint8_t>(~n));
    z.push_back(static_cast<std::uint8_t>(~n >> 8));
    z.insert(z.end(), raw.begin() + static_cast<std::ptrdiff_t>(pos),
             raw.begin() + static_cast<std::ptrdiff_t>(pos + n));
    pos += n;
  } while (pos < raw.size());
  std::uint32_t a = 1, b = 0;
  for (const auto v : raw) {
    a = (a + v) % 65521;
    b = (b + a) % 65521;
  }
  be32(z, (b << 16) | a);
  return z;
}
// color_type: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA. rows: packed sample bytes per row.
std::vector<std::uint8_t> make_png(int w, int h, int depth, int color_type,
                                   const std::vector<std::vector<std::uint8_t>>& rows,
                                   const std::vector<std::uint8_t>& plte = {},
                                   const std::vector<std::uint8_t>& trns = {}) {
  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  std::vector<std::uint8_t> ihdr;
  be32(ihdr, static_cast<std::uint32_t>(w));
  be32(ihdr, static_cast<std::uint32_t>(h));
  ihdr.insert(ihdr.end(), {static_cast<std::uint8_t>(depth), static_cast<std::uint8_t>(color_type), 0, 0, 0});
  chunk(png, "IHDR", ihdr);
  if (!plte.empty()) chunk(png, "PLTE", plte);
  if (!trns.empty()) chunk(png, "tRNS", trns);
  std::vector<std::uint8_t> raw;
  for (const auto& r : rows) {
    raw.push_back(0);
    raw.insert(raw.end(), r.begin(), r.end());
  }
  chunk(png, "IDAT", zlib_stored(raw));
  chunk(png, "IEND", {});
  return png;
}

void write_file(const fs::path& p, const std::vector<std::uint8_t>& bytes) {
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Image random_image(int w, int h, int c, int depth, unsigned seed) {
  Image img = Image::blank(w, h, c, depth);
  std::mt19937 rng(seed);
  for (auto& s : img.samples) s = static_cast<std::uint16_t>(rng() % (depth == 16 ? 65536u : 256u));
  return img;
}

}  // namespace

TEST(DataImage, HandMadePngRgbAndGrey) {
  // 3x2 RGB, 8 bits.
  std::vector<std::vector<std::uint8_t>> rows = {{1, 2, 3, 4, 5, 6, 7, 8, 9},
                                                 {250, 251, 252, 0, 128, 255, 10, 20, 30}};
  Image img = decode_image(make_png(3, 2, 8, 2, rows), "rgb.png");
  ASSERT_EQ(img.width, 3);
  ASSERT_EQ(img.height, 2);
  ASSERT_EQ(img.channels, 3);
  EXPECT_EQ(img.depth, 8);
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 3; ++x)
      for (int c = 0; c < 3; ++c)
        EXPECT_EQ(img.at(y, x, c), rows[static_cast<std::size_t>(y)][static_cast<std::size_t>(x * 3 + c)]);

  // 16-bit grey, big-endian in the file.
  Image g = decode_image(make_png(2, 1, 16, 0, {{0x12, 0x34, 0xff, 0xfe}}), "g16.png");
  ASSERT_EQ(g.channels, 1);
  EXPECT_EQ(g.depth, 16);
  EXPECT_EQ(g.at(0, 0, 0), 0x1234);
  EXPECT_EQ(g.at(0, 1, 0), 0xfffe);
}

TEST(DataImage, HandMadePngLowBitGreyIsScaledLikePil) {
  // 1-bit: 0/1 -> 0/255; 2-bit: v * 85; 4-bit: v * 17 (PIL's unpackers do the same).
  Image b1 = decode_image(make_png(8, 1, 1, 0, {{0b10110001}}), "b1.png");
  const int expect1[8] = {255, 0, 255, 255, 0, 0, 0, 255};
  for (int x = 0; x < 8; ++x) EXPECT_EQ(b1.at(0, x, 0), expect1[x]) << x;
  Image b2 = decode_image(make_png(4, 1, 2, 0, {{0b00011011}}), "b2.png");
  for (int x = 0; x < 4; ++x) EXPECT_EQ(b2.at(0, x, 0), x * 85);
  Image b4 = decode_image(make_png(2, 1, 4, 0, {{0x3c}}), "b4.png");
  EXPECT_EQ(b4.at(0, 0, 0), 3 * 17);
  EXPECT_EQ(b4.at(0, 1, 0), 12 * 17);
}

TEST(DataImage, HandMadePngPaletteWithTransparency) {
  const std::vector<std::uint8_t> plte = {10, 20, 30, 40, 50, 60, 70, 80, 90};
  Image p = decode_image(make_png(3, 1, 8, 3, {{2, 0, 1}}, plte, {255, 0}), "p.png");
  ASSERT_EQ(p.channels, 4);  // tRNS -> alpha
  EXPECT_EQ(p.at(0, 0, 0), 70);
  EXPECT_EQ(p.at(0, 0, 3), 255);  // index 2 has no tRNS entry: opaque
  EXPECT_EQ(p.at(0, 1, 2), 30);
  EXPECT_EQ(p.at(0, 2, 3), 0);  // index 1 transparent
  // To RGB, alpha is dropped (PIL's convert("RGB") does not composite).
  Image rgb = convert_channels(p, 3);
  EXPECT_EQ(rgb.channels, 3);
  EXPECT_EQ(rgb.at(0, 2, 0), 40);
}

TEST(DataImage, PngRoundTripEveryChannelCountAndDepth) {
  const fs::path d = temp_dir("png");
  for (int depth : {8, 16})
    for (int c = 1; c <= 4; ++c) {
      const Image img = random_image(17, 11, c, depth, static_cast<unsigned>(depth * 10 + c));
      const fs::path p = d / ("img_" + std::to_string(c) + "_" + std::to_string(depth) + ".png");
      write_png(p, img);
      const Image back = read_image(p);
      EXPECT_EQ(back.width, 17);
      EXPECT_EQ(back.height, 11);
      EXPECT_EQ(back.channels, c);
      EXPECT_EQ(back.depth, depth);
      EXPECT_EQ(back.samples, img.samples) << "channels " << c << " depth " << depth;
    }
  fs::remove_all(d);
}

TEST(DataImage, JpegRoundTripIsClose) {
  const fs::path d = temp_dir("jpeg");
  // A smooth image: JPEG at quality 100 reproduces it to a few levels.
  Image img = Image::blank(40, 24, 3);
  for (int y = 0; y < 24; ++y)
    for (int x = 0; x < 40; ++x) {
      img.at(y, x, 0) = static_cast<std::uint16_t>(x * 6);
      img.at(y, x, 1) = static_cast<std::uint16_t>(y * 10);
      img.at(y, x, 2) = static_cast<std::uint16_t>(128);
    }
  write_jpeg(d / "a.jpg", img, 100);
  const Image back = read_image(d / "a.jpg");
  ASSERT_EQ(back.channels, 3);
  ASSERT_EQ(back.width, 40);
  int worst = 0;
  double sum = 0;
  for (std::size_t i = 0; i < img.samples.size(); ++i) {
    worst = std::max(worst, std::abs(img.samples[i] - back.samples[i]));
    sum += std::abs(img.samples[i] - back.samples[i]);
  }
  EXPECT_LE(worst, 8);  // 4:2:0 chroma subsampling blurs the colour gradient a little
  EXPECT_LT(sum / static_cast<double>(img.samples.size()), 1.0);
  // Grey JPEG stays one channel.
  write_jpeg(d / "g.jpg", convert_channels(img, 1), 90);
  EXPECT_EQ(read_image(d / "g.jpg").channels, 1);
  EXPECT_THROW(write_jpeg(d / "x.jpg", random_image(4, 4, 4, 8, 1)), ArgumentError);
  EXPECT_THROW(write_jpeg(d / "x.jpg", img, 0), ArgumentError);
  fs::remove_all(d);
}

TEST(DataImage, CorruptAndTruncatedFilesNameTheFile) {
  const fs::path d = temp_dir("corrupt");
  // PNG: truncated in the middle of IDAT.
  write_png(d / "ok.png", random_image(30, 30, 3, 8, 7));
  std::ifstream in(d / "ok.png", std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(bytes.size() / 2));
  write_file(d / "cut.png", cut);
  try {
    read_image(d / "cut.png");
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.png"), std::string::npos) << e.what();
  }
  // PNG with a flipped byte inside a chunk: CRC mismatch.
  std::vector<std::uint8_t> bad = bytes;
  bad[50] ^= 0x55;
  write_file(d / "crc.png", bad);
  EXPECT_THROW(read_image(d / "crc.png"), FormatError);

  // JPEG: truncated.
  Image img = random_image(32, 32, 3, 8, 3);
  write_jpeg(d / "ok.jpg", img, 90);
  std::ifstream jin(d / "ok.jpg", std::ios::binary);
  std::vector<std::uint8_t> jb((std::istreambuf_iterator<char>(jin)), {});
  write_file(d / "cut.jpg",
             std::vector<std::uint8_t>(jb.begin(), jb.begin() + static_cast<std::ptrdiff_t>(jb.size() / 2)));
  try {
    read_image(d / "cut.jpg");
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.jpg"), std::string::npos) << e.what();
  }
  // Only the JPEG header.
  write_file(d / "head.jpg", std::vector<std::uint8_t>(jb.begin(), jb.begin() + 20));
  EXPECT_THROW(read_image(d / "head.jpg"), FormatError);

  // Not an image / empty / missing.
  write_file(d / "text.png", {'h', 'e', 'l', 'l', 'o'});
  EXPECT_THROW(read_image(d / "text.png"), UnsupportedError);
  write_file(d / "empty.png", {});
  EXPECT_THROW(read_image(d / "empty.png"), FormatError);
  EXPECT_THROW(read_image(d / "missing.png"), IoError);
  EXPECT_THROW(read_image(d), IoError);  // a folder
  fs::remove_all(d);
}

TEST(DataImage, FormatDetection) {
  const std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a, 0};
  const std::vector<std::uint8_t> jpg = {0xff, 0xd8, 0xff, 0xe0};
  EXPECT_EQ(detect_image_format(png), ImageFormat::Png);
  EXPECT_EQ(detect_image_format(jpg), ImageFormat::Jpeg);
  EXPECT_EQ(detect_image_format(std::vector<std::uint8_t>{'G', 'I', 'F', '8'}), ImageFormat::Unknown);
  EXPECT_EQ(detect_image_format({}), ImageFormat::Unknown);
}

TEST(DataImage, ConvertChannelsMatchesPilFormulas) {
  Image rgba = random_image(9, 7, 4, 8, 11);
  Image grey = convert_channels(rgba, 1);
  Image rgb = convert_channels(rgba, 3);
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 9; ++x) {
      // ITU-R 601-2 luma L = R*299/1000 + G*587/1000 + B*114/1000 in PIL's 16.16 fixed point.
      const double l = rgba.at(y, x, 0) * 0.299 + rgba.at(y, x, 1) * 0.587 + rgba.at(y, x, 2) * 0.114;
      EXPECT_LE(std::abs(grey.at(y, x, 0) - l), 0.51) << y << "," << x;
      const std::uint32_t fixed =
          (rgba.at(y, x, 0) * 19595u + rgba.at(y, x, 1) * 38470u + rgba.at(y, x, 2) * 7471u + 0x8000u) >> 16;
      EXPECT_EQ(grey.at(y, x, 0), fixed);
      for (int c = 0; c < 3; ++c) EXPECT_EQ(rgb.at(y, x, c), rgba.at(y, x, c));
    }
  Image la = random_image(5, 4, 2, 16, 12);
  Image la3 = convert_channels(la, 3);
  for (int c = 0; c < 3; ++c) EXPECT_EQ(la3.at(3, 4, c), la.at(3, 4, 0));
  EXPECT_EQ(la3.depth, 16);
  EXPECT_THROW(convert_channels(la, 2), UnsupportedError);
  Image broken = la;
  broken.samples.pop_back();
  EXPECT_THROW(convert_channels(broken, 3), ArgumentError);
}

TEST(DataImage, CropAndFlip) {
  Image img = random_image(6, 5, 3, 8, 5);
  Image c = crop(img, 2, 1, 3, 4);
  ASSERT_EQ(c.width, 3);
  ASSERT_EQ(c.height, 4);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 3; ++x)
      for (int k = 0; k < 3; ++k) EXPECT_EQ(c.at(y, x, k), img.at(y + 1, x + 2, k));
  Image f = flip_horizontal(img);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 6; ++x) EXPECT_EQ(f.at(y, x, 1), img.at(y, 5 - x, 1));
  EXPECT_THROW(crop(img, 4, 0, 3, 1), ArgumentError);
  EXPECT_THROW(crop(img, -1, 0, 1, 1), ArgumentError);
  EXPECT_THROW(crop(img, 0, 0, 0, 1), ArgumentError);
  EXPECT_THROW(Image::blank(0, 3, 3), ArgumentError);
  EXPECT_THROW(Image::blank(3, 3, 5), ArgumentError);
  EXPECT_THROW(Image::blank(3, 3, 3, 12), ArgumentError);
}

namespace {

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(f)), {});
}

// A real JPEG of w x h from libjpeg, in memory.
std::vector<std::uint8_t> small_jpeg(int w, int h) {
  const fs::path p = temp_dir("jpeg_bytes") / "small.jpg";
  write_jpeg(p, random_image(w, h, 3, 8, 4), 90);
  return read_bytes(p);
}

// Offset of the first marker 0xFF `code` after the SOI.
std::size_t marker(const std::vector<std::uint8_t>& j, std::uint8_t code) {
  for (std::size_t i = 2; i + 1 < j.size(); ++i)
    if (j[i] == 0xff && j[i + 1] == code) return i;
  return std::string::npos;
}

}  // namespace

TEST(DataImage, DecompressionBombsAreRefusedBeforeAllocating) {
  // JPEG: a small real file whose frame header claims 64520 x 16621 pixels (1.07 G), its scan cut
  // short: refused on the header (it used to decode "successfully" as grey after allocating 3 GB).
  std::vector<std::uint8_t> j = small_jpeg(16, 16);
  const std::size_t sof = marker(j, 0xc0);
  ASSERT_NE(sof, std::string::npos);
  j[sof + 5] = 16621 >> 8;  // height
  j[sof + 6] = 16621 & 0xff;
  j[sof + 7] = static_cast<std::uint8_t>(64520 >> 8);  // width
  j[sof + 8] = 64520 & 0xff;
  const std::size_t sos = marker(j, 0xda);
  j.resize(sos + 40);
  j.insert(j.end(), {0xff, 0xd9});
  try {
    (void)decode_image(j, "bomb.jpg");
    FAIL() << "a 1.07-gigapixel JPEG header was decoded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("64520x16621"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
  }
  // PNG: 69 bytes declaring a 16-bit RGBA image of 23170 x 23170 (4.3 GB decoded).
  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  std::vector<std::uint8_t> ihdr;
  be32(ihdr, 23170);
  be32(ihdr, 23170);
  ihdr.insert(ihdr.end(), {16, 6, 0, 0, 0});
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", zlib_stored({0, 1, 2, 3}));
  chunk(png, "IEND", {});
  EXPECT_THROW((void)decode_image(png, "bomb.png"), FormatError);
  // The limit is the caller's to set: 100 pixels refuse a 16 x 16 image; 0 lifts it.
  const std::uint64_t before = max_image_pixels();
  EXPECT_EQ(before, 178956970u);
  set_max_image_pixels(100);
  EXPECT_THROW((void)decode_image(small_jpeg(16, 16), "small.jpg"), FormatError);
  set_max_image_pixels(0);
  EXPECT_EQ(decode_image(small_jpeg(16, 16), "small.jpg").width, 16);
  set_max_image_pixels(before);
}

TEST(DataImage, AJpegWhoseDataSegmentEndsEarlyIsAnErrorNotGreyPadding) {
  // A real 64 x 64 JPEG with its entropy-coded data cut in half and an EOI after it: libjpeg
  // warns "premature end of data segment" and pads with grey; that must not pass as an image.
  std::vector<std::uint8_t> j = small_jpeg(64, 64);
  EXPECT_EQ(decode_image(j, "whole.jpg").height, 64);
  const std::size_t sos = marker(j, 0xda);
  j.resize(sos + (j.size() - sos) / 2);
  j.insert(j.end(), {0xff, 0xd9});
  EXPECT_THROW((void)decode_image(j, "cut.jpg"), FormatError);
}

// A camera's photo carries its orientation in EXIF (APP1) instead of rotated pixels. PIL's
// Image.open, and so torchvision's ImageFolder loader and guided-diffusion's load_data, ignore
// it (only ImageOps.exif_transpose applies it), and the paper's features were computed that way:
// diffprobe decodes the stored pixels as they are, whatever the tag says.
TEST(DataImage, ExifOrientationIsIgnoredLikePil) {
  const fs::path d = temp_dir("exif");
  Image img = Image::blank(21, 13, 3);
  for (std::size_t i = 0; i < img.samples.size(); ++i)
    img.samples[i] = static_cast<std::uint16_t>((i * 37) % 256);
  write_jpeg(d / "plain.jpg", img, 95);
  std::ifstream in(d / "plain.jpg", std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GE(bytes.size(), 4u);
  ASSERT_EQ(bytes[0], 0xFF);
  ASSERT_EQ(bytes[1], 0xD8);
  for (const std::uint8_t orientation : {3, 6, 8}) {  // 180°, 90° CW, 90° CCW
    // APP1: "Exif\0\0", a big-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, 1.
    const std::vector<std::uint8_t> app1 = {0xFF, 0xE1, 0x00,        0x22, 'E',  'x',  'i',  'f',  0,
                                            0,    'M',  'M',         0x00, 0x2A, 0x00, 0x00, 0x00, 0x08,
                                            0x00, 0x01, 0x01,        0x12, 0x00, 0x03, 0x00, 0x00, 0x00,
                                            0x01, 0x00, orientation, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    std::vector<std::uint8_t> tagged(bytes.begin(), bytes.begin() + 2);
    tagged.insert(tagged.end(), app1.begin(), app1.end());
    tagged.insert(tagged.end(), bytes.begin() + 2, bytes.end());
    const Image a = decode_image(bytes, "plain.jpg");
    const Image b = decode_image(tagged, "rotated.jpg");
    EXPECT_EQ(b.width, a.width) << "orientation " << int(orientation);
    EXPECT_EQ(b.height, a.height);
    EXPECT_EQ(b.samples, a.samples);
  }
  fs::remove_all(d);
}
