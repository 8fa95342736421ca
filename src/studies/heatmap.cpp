// A 5x7 bitmap font and a viridis ramp are all a labelled heatmap needs; data::write_png writes it.
#include "studies/heatmap.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/image.hpp"

namespace diffprobe::detail {
namespace {

// Rows top to bottom, 5 bits each (bit 4 = leftmost pixel). Characters outside the table are blank.
using Glyph = std::array<std::uint8_t, 7>;
Glyph glyph(char c) {
  switch (c) {
    case '0': return {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E};
    case '1': return {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E};
    case '2': return {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F};
    case '3': return {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E};
    case '4': return {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02};
    case '5': return {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E};
    case '6': return {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E};
    case '7': return {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08};
    case '8': return {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E};
    case '9': return {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C};
    case '.': return {0, 0, 0, 0, 0, 0x0C, 0x0C};
    case ',': return {0, 0, 0, 0, 0x0C, 0x04, 0x08};
    case ':': return {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0};
    case ';': return {0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08};
    case '=': return {0, 0, 0x1F, 0, 0x1F, 0, 0};
    case '-': return {0, 0, 0, 0x1F, 0, 0, 0};
    case '%': return {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03};
    case '(': return {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02};
    case ')': return {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08};
    case 'a': return {0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F};
    case 'b': return {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E};
    case 'c': return {0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E};
    case 'd': return {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F};
    case 'e': return {0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E};
    case 'f': return {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08};
    case 'g': return {0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E};
    case 'h': return {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11};
    case 'i': return {0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E};
    case 'k': return {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12};
    case 'l': return {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E};
    case 'm': return {0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11};
    case 'n': return {0, 0, 0x16, 0x19, 0x11, 0x11, 0x11};
    case 'o': return {0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E};
    case 'p': return {0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10};
    case 'r': return {0, 0, 0x16, 0x19, 0x10, 0x10, 0x10};
    case 's': return {0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E};
    case 't': return {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06};
    case 'u': return {0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D};
    case 'v': return {0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04};
    case 'w': return {0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A};
    case 'x': return {0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11};
    case 'y': return {0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E};
    default: return {0, 0, 0, 0, 0, 0, 0};
  }
}

struct Rgb {
  std::uint8_t r, g, b;
};

// Viridis at 9 evenly spaced stops, linearly interpolated.
Rgb viridis(double v) {
  static constexpr std::array<std::array<double, 3>, 9> stops = {{{68, 1, 84},
                                                                  {71, 44, 122},
                                                                  {59, 81, 139},
                                                                  {44, 113, 142},
                                                                  {33, 144, 141},
                                                                  {39, 173, 129},
                                                                  {92, 200, 99},
                                                                  {170, 220, 50},
                                                                  {253, 231, 37}}};
  v = std::clamp(v, 0.0, 1.0) * 8.0;
  const int i = std::min(7, static_cast<int>(v));
  const double f = v - i;
  auto mix = [&](int c) {
    return static_cast<std::uint8_t>(
        std::lround(stops[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)] * (1 - f) +
                    stops[static_cast<std::size_t>(i + 1)][static_cast<std::size_t>(c)] * f));
  };
  return {mix(0), mix(1), mix(2)};
}

class Canvas {
 public:
  Canvas(int w, int h) : img_(data::Image::blank(w, h, 3)) {
    std::fill(img_.samples.begin(), img_.samples.end(), std::uint16_t{255});
  }
  void pixel(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= img_.width || y >= img_.height) return;
    const std::size_t i =
        (static_cast<std::size_t>(y) * static_cast<std::size_t>(img_.width) + static_cast<std::size_t>(x)) *
        3;
    img_.samples[i] = c.r;
    img_.samples[i + 1] = c.g;
    img_.samples[i + 2] = c.b;
  }
  void rect(int x, int y, int w, int h, Rgb c) {
    for (int j = y; j < y + h; ++j)
      for (int i = x; i < x + w; ++i) pixel(i, j, c);
  }
  void frame(int x, int y, int w, int h, int t, Rgb c) {
    rect(x, y, w, t, c);
    rect(x, y + h - t, w, t, c);
    rect(x, y, t, h, c);
    rect(x + w - t, y, t, h, c);
  }
  static int text_width(const std::string& s, int scale) {
    return static_cast<int>(s.size()) * 6 * scale - scale;
  }
  void text(int x, int y, const std::string& s, int scale, Rgb c) {
    for (std::size_t k = 0; k < s.size(); ++k) {
      const Glyph g = glyph(s[k]);
      for (int row = 0; row < 7; ++row)
        for (int col = 0; col < 5; ++col)
          if (g[static_cast<std::size_t>(row)] & (0x10 >> col))
            rect(x + (static_cast<int>(k) * 6 + col) * scale, y + row * scale, scale, scale, c);
    }
  }
  const data::Image& image() const { return img_; }

 private:
  data::Image img_;
};

}  // namespace

void write_heatmap_png(const std::filesystem::path& path, const Heatmap& map) {
  const int rows = static_cast<int>(map.row_labels.size()), cols = static_cast<int>(map.column_labels.size());
  if (rows == 0 || cols == 0 || static_cast<int>(map.values.size()) != rows)
    throw ArgumentError("write_heatmap_png", "the grid is empty or its values do not match its labels");
  for (const auto& r : map.values)
    if (static_cast<int>(r.size()) != cols)
      throw ArgumentError("write_heatmap_png", "every row needs one value per column");
  const int s = 2;                                                 // label scale
  const int cw = Canvas::text_width("00.0", 1) + 10, ch = 7 + 12;  // value cells at scale 1
  int label_w = Canvas::text_width(map.row_axis, s);
  for (const auto& l : map.row_labels) label_w = std::max(label_w, Canvas::text_width(l, s));
  const int left = label_w + 16, top = 6 + 7 * s + 10 + 7 * s + 8 + 7 + 6;  // title, axis name, labels
  const int width = std::max(left + cols * cw + 10, Canvas::text_width(map.title, s) + 20);
  const int height = top + rows * ch + 10;
  Canvas cv(width, height);
  const Rgb black{0, 0, 0}, white{255, 255, 255}, grey{200, 200, 200}, red{220, 30, 30};
  cv.text(10, 6, map.title, s, black);
  cv.text(left - Canvas::text_width(map.row_axis, s) - 8, top - 7 * s - 4, map.row_axis, s, black);
  cv.text(left, 6 + 7 * s + 10, map.column_axis, s, black);
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& r : map.values)
    for (double v : r)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  for (int c = 0; c < cols; ++c) {
    const std::string& l = map.column_labels[static_cast<std::size_t>(c)];
    const int lw = Canvas::text_width(l, 1);
    cv.text(left + c * cw + (cw - lw) / 2, top - 7 - 4, l, 1, black);
  }
  for (int r = 0; r < rows; ++r) {
    const std::string& l = map.row_labels[static_cast<std::size_t>(r)];
    cv.text(left - Canvas::text_width(l, s) - 8, top + r * ch + (ch - 7 * s) / 2, l, s, black);
    for (int c = 0; c < cols; ++c) {
      const double v = map.values[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)];
      const int x = left + c * cw, y = top + r * ch;
      if (!std::isfinite(v)) {
        cv.rect(x, y, cw, ch, grey);
        continue;
      }
      const double u = hi > lo ? (v - lo) / (hi - lo) : 1.0;
      const Rgb bg = viridis(u);
      cv.rect(x, y, cw, ch, bg);
      const std::string txt = fmt::format("{:.1f}", 100 * v);
      const bool light = 0.299 * bg.r + 0.587 * bg.g + 0.114 * bg.b > 140;
      cv.text(x + (cw - Canvas::text_width(txt, 1)) / 2, y + (ch - 7) / 2, txt, 1, light ? black : white);
    }
  }
  if (map.best_row >= 0 && map.best_column >= 0)
    cv.frame(left + map.best_column * cw, top + map.best_row * ch, cw, ch, 2, red);
  data::write_png(path, cv.image());
}

}  // namespace diffprobe::detail
