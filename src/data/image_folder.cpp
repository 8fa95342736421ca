#include "diffprobe/data/image_folder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "diffprobe/core/error.hpp"

namespace diffprobe::data {
namespace fs = std::filesystem;
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// torchvision's IMG_EXTENSIONS: the ones we decode, and the ones we refuse loudly.
bool decodable(const std::string& ext) { return ext == ".png" || ext == ".jpg" || ext == ".jpeg"; }
bool other_image(const std::string& ext) {
  static const std::set<std::string> k = {".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"};
  return k.count(ext) != 0;
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);  // follows symlinks, as os.walk(followlinks=True) does
}

// Every folder under `dir` (itself included), following symlinks but never entering the same
// real folder twice (a link cycle would otherwise never end).
void collect_dirs(const fs::path& dir, std::vector<fs::path>& out, std::set<fs::path>& seen) {
  std::error_code ec;
  const fs::path real = fs::canonical(dir, ec);
  if (ec || !seen.insert(real).second) return;
  out.push_back(dir);
  fs::directory_iterator it(dir, ec), end;
  if (ec) throw IoError(dir.string(), "cannot list folder: " + ec.message());
  std::vector<fs::path> subs;
  for (; it != end; it.increment(ec)) {
    if (ec) throw IoError(dir.string(), "cannot list folder: " + ec.message());
    if (is_dir(it->path())) subs.push_back(it->path());
  }
  for (const auto& s : subs) collect_dirs(s, out, seen);
}

}  // namespace

ImageFolder::ImageFolder(const fs::path& root, InputSpec spec, Transform transform)
    : root_(root), spec_(spec), transform_(transform) {
  const std::string where = "ImageFolder(" + root.string() + ")";
  spec_.validate(where.c_str());
  if (spec_.channels != 1 && spec_.channels != 3)
    throw UnsupportedError(
        where, "images convert to 1 or 3 channels; the model takes " + std::to_string(spec_.channels));
  transform_.validate();
  std::error_code ec;
  if (!fs::exists(root, ec)) throw IoError(where, "no such folder");
  if (!is_dir(root)) throw IoError(where, "not a folder");

  fs::directory_iterator it(root, ec), end;
  if (ec) throw IoError(where, "cannot list folder: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw IoError(where, "cannot list folder: " + ec.message());
    if (is_dir(it->path())) classes_.push_back(it->path().filename().string());
  }
  std::sort(classes_.begin(), classes_.end());
  if (classes_.empty()) throw ArgumentError(where, "no class sub-folders (expected root/<class>/<image>)");

  std::vector<std::string> empty, unsupported;
  for (std::size_t c = 0; c < classes_.size(); ++c) {
    // torchvision: sorted(os.walk(class_dir)), file names sorted within each folder.
    std::vector<fs::path> dirs;
    std::set<fs::path> seen;
    collect_dirs(root / classes_[c], dirs, seen);
    std::sort(dirs.begin(), dirs.end(),
              [](const fs::path& a, const fs::path& b) { return a.string() < b.string(); });
    const std::size_t before = files_.size();
    for (const auto& d : dirs) {
      std::vector<std::string> names;
      fs::directory_iterator di(d, ec);
      if (ec) throw IoError(d.string(), "cannot list folder: " + ec.message());
      for (; di != end; di.increment(ec)) {
        if (ec) throw IoError(d.string(), "cannot list folder: " + ec.message());
        if (is_dir(di->path())) continue;
        const std::string ext = lower(di->path().extension().string());
        if (decodable(ext)) {
          names.push_back(di->path().filename().string());
        } else if (other_image(ext)) {
          unsupported.push_back(di->path().string());
        }
      }
      std::sort(names.begin(), names.end());
      for (auto& n : names) {
        files_.push_back(d / n);
        labels_.push_back(static_cast<int>(c));
      }
    }
    if (files_.size() == before) empty.push_back(classes_[c]);
  }
  if (!unsupported.empty())
    throw UnsupportedError(
        where, fmt::format("{} image(s) in formats other than PNG and JPEG, e.g. {}; convert them or "
                           "move them out",
                           unsupported.size(), unsupported.front()));
  if (!empty.empty())
    throw ArgumentError(
        where, fmt::format("class folder(s) without any .png/.jpg/.jpeg image: {}", fmt::join(empty, ", ")));
}

ImageFolder::ImageFolder(const fs::path& root, const Shape& input_shape, Transform transform)
    : ImageFolder(root, InputSpec::from_shape(input_shape), transform) {}

std::optional<Tensor> ImageFolder::labels() const {
  Tensor t = Tensor::empty({size()}, DType::I64);
  auto* p = t.data<std::int64_t>();
  for (std::size_t i = 0; i < labels_.size(); ++i) p[i] = labels_[i];
  return t;
}

const fs::path& ImageFolder::file(std::int64_t index) const {
  if (index < 0 || index >= size())
    throw ArgumentError("ImageFolder::file", fmt::format("index {} is outside [0, {})", index, size()));
  return files_[static_cast<std::size_t>(index)];
}

int ImageFolder::label(std::int64_t index) const {
  file(index);  // range check
  return labels_[static_cast<std::size_t>(index)];
}

std::string ImageFolder::describe() const {
  return fmt::format(
      "ImageFolder {}: {} images, {} classes; {}; to {} channel(s) (RGB: alpha dropped, grey "
      "replicated), S={}; 8-bit v/127.5-1, 16-bit v/32767.5-1",
      root_.string(), size(), num_classes(), transform_.str(), spec_.channels, spec_.size);
}

void ImageFolder::load(std::int64_t index, float* out) const {
  const Image img = read_image(files_[static_cast<std::size_t>(index)]);
  transform_.apply(img, spec_, out, epoch(), index);
}

}  // namespace diffprobe::data
