#include "diffprobe/data/idx_dataset.hpp"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/transform.hpp"
#include "diffprobe/io/idx.hpp"

namespace diffprobe::data {
namespace {

struct IdxHeader {
  int type = 0;  // 0x08 unsigned byte, ...
  std::vector<std::int64_t> dims;
};

// The magic number and dimensions only (io::load_idx reads the data but, with a limit, cannot
// tell how many items the file holds, which the label check needs).
IdxHeader read_header(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw IoError(where, "no such file");
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files transparently too
  if (!f) throw IoError(where, std::string("cannot open: ") + std::strerror(errno));
  std::uint8_t buf[4 + 4 * 8];
  const int got = gzread(f, buf, 4);
  IdxHeader h;
  bool ok = got == 4 && buf[0] == 0 && buf[1] == 0 && buf[3] >= 1 && buf[3] <= 8;
  if (ok) {
    h.type = buf[2];
    const int rank = buf[3];
    ok = gzread(f, buf + 4, static_cast<unsigned>(4 * rank)) == 4 * rank;
    for (int i = 0; ok && i < rank; ++i) {
      const std::uint8_t* p = buf + 4 + 4 * i;
      h.dims.push_back((std::int64_t{p[0]} << 24) | (std::int64_t{p[1]} << 16) | (std::int64_t{p[2]} << 8) |
                       p[3]);
    }
  }
  gzclose(f);
  if (!ok) throw FormatError(where, "not an IDX file (bad or truncated header)");
  return h;
}

}  // namespace

std::vector<std::string> IdxDataset::fashion_mnist_classes() {
  return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
}

IdxDataset::IdxDataset(const std::filesystem::path& images,
                       const std::optional<std::filesystem::path>& labels, InputSpec spec, IdxOptions options)
    : path_(images),
      spec_(spec),
      class_names_(std::move(options.class_names)),
      transform_(options.transform) {
  const std::string where = images.string();
  spec_.validate("IdxDataset");
  transform_.validate();
  if (options.limit < 0)
    throw ArgumentError("IdxDataset", fmt::format("limit must be >= 0, got {}", options.limit));
  const IdxHeader h = read_header(images);
  if (h.type != 0x08 || h.dims.size() != 3)
    throw FormatError(
        where, fmt::format("expected unsigned-byte images [N, H, W]; the file holds type 0x{:02x} of rank {}",
                           h.type, h.dims.size()));
  if (h.dims[1] < 1 || h.dims[2] < 1 || h.dims[1] > 65536 || h.dims[2] > 65536)
    throw FormatError(where, fmt::format("image size {}x{} is out of range", h.dims[1], h.dims[2]));
  const Tensor px = io::load_idx(images, options.limit);
  n_ = px.dim(0);
  h_ = static_cast<int>(px.dim(1));
  w_ = static_cast<int>(px.dim(2));
  if (n_ == 0) throw ArgumentError(where, "the file holds no images");
  const std::int32_t* v = px.data<std::int32_t>();
  pixels_.resize(static_cast<std::size_t>(px.numel()));
  for (std::size_t i = 0; i < pixels_.size(); ++i) pixels_[i] = static_cast<std::uint8_t>(v[i]);

  if (labels) {
    const std::string lwhere = labels->string();
    const IdxHeader lh = read_header(*labels);
    if (lh.dims.size() != 1 || (lh.type != 0x08 && lh.type != 0x09 && lh.type != 0x0B && lh.type != 0x0C))
      throw FormatError(
          lwhere, fmt::format("expected integer labels [N]; the file holds type 0x{:02x} of rank {}", lh.type,
                              lh.dims.size()));
    if (lh.dims[0] != h.dims[0])
      throw FormatError(lwhere, fmt::format("{} labels for {} images in {}", lh.dims[0], h.dims[0], where));
    const Tensor all = io::load_idx(*labels);  // every label, so num_classes does not depend on the limit
    const std::int32_t* l = all.data<std::int32_t>();
    std::int32_t max_label = 0;
    for (std::int64_t i = 0; i < all.numel(); ++i) {
      if (l[i] < 0) throw FormatError(lwhere, fmt::format("label {} at index {} is negative", l[i], i));
      max_label = std::max(max_label, l[i]);
    }
    num_classes_ = class_names_.empty() ? max_label + 1 : static_cast<int>(class_names_.size());
    if (max_label >= num_classes_)
      throw FormatError(
          lwhere, fmt::format("label {} needs more than the {} class names given", max_label, num_classes_));
    labels_.assign(l, l + n_);
    has_labels_ = true;
  } else if (!class_names_.empty()) {
    num_classes_ = static_cast<int>(class_names_.size());
  }
}

bool IdxDataset::pads() const noexcept { return h_ == w_ && spec_.size >= h_ && (spec_.size - h_) % 2 == 0; }

std::optional<Tensor> IdxDataset::labels() const {
  if (!has_labels_) return std::nullopt;
  Tensor t = Tensor::empty({n_}, DType::I64);
  std::copy(labels_.begin(), labels_.end(), t.data<std::int64_t>());
  return t;
}

std::vector<std::string> IdxDataset::class_names() const {
  if (!class_names_.empty()) return class_names_;
  std::vector<std::string> names;
  for (int i = 0; i < num_classes_; ++i) names.push_back(std::to_string(i));
  return names;
}

std::string IdxDataset::describe() const {
  std::string geometry = pads() ? fmt::format("pad {} px each side with -1 to {}x{}", (spec_.size - h_) / 2,
                                              spec_.size, spec_.size)
                                : fmt::format("{} to {}x{}", transform_.str(), spec_.size, spec_.size);
  if (pads() && transform_.random()) geometry += fmt::format(", then {}", transform_.str());
  return fmt::format("IDX {}: {} images {}x{}; uint8 v/127.5-1; {}; grey replicated to {} channel(s)",
                     path_.string(), n_, h_, w_, geometry, spec_.channels);
}

void IdxDataset::load(std::int64_t index, float* out) const {
  const int S = spec_.size;
  const std::size_t plane = static_cast<std::size_t>(S) * static_cast<std::size_t>(S);
  const std::uint8_t* src =
      &pixels_[static_cast<std::size_t>(index) * static_cast<std::size_t>(h_) * static_cast<std::size_t>(w_)];
  if (pads() && transform_.random()) {
    const int pad = (S - h_) / 2;
    Image img = Image::blank(S, S, 1);  // zero: -1 after scaling
    for (int y = 0; y < h_; ++y)
      for (int x = 0; x < w_; ++x) img.at(y + pad, x + pad, 0) = src[y * w_ + x];
    transform_.apply(img, InputSpec{1, S}, out, epoch(), index);
  } else if (pads()) {
    const int pad = (S - h_) / 2;
    std::fill(out, out + plane, -1.0f);
    for (int y = 0; y < h_; ++y)
      for (int x = 0; x < w_; ++x)
        out[static_cast<std::size_t>(y + pad) * static_cast<std::size_t>(S) +
            static_cast<std::size_t>(x + pad)] = static_cast<float>(src[y * w_ + x]) / 127.5f - 1.0f;
  } else {
    Image img = Image::blank(w_, h_, 1);
    std::copy(src, src + static_cast<std::size_t>(h_) * static_cast<std::size_t>(w_), img.samples.begin());
    transform_.apply(img, InputSpec{1, S}, out, epoch(), index);
  }
  for (int c = 1; c < spec_.channels; ++c)
    std::copy(out, out + plane, out + static_cast<std::size_t>(c) * plane);
}

}  // namespace diffprobe::data
