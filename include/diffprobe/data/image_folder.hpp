#pragma once
// torchvision's ImageFolder layout: root/<class>/**/<image>. Class ids are the sub-folder names
// in sorted (byte) order; files are listed like torchvision (folders walked in sorted order,
// symlinks followed, names sorted within each folder). Only the list is built up front: images
// are decoded (PNG, JPEG) and transformed when a batch is asked for.
#include <filesystem>
#include <string>
#include <vector>

#include "diffprobe/data/dataset.hpp"
#include "diffprobe/data/transform.hpp"

namespace diffprobe::data {

class ImageFolder : public Dataset {
 public:
  /// Lists root. ArgumentError when root has no class folder or a class folder holds no image;
  /// IoError when root is not a readable folder; UnsupportedError when an image has a format
  /// we cannot decode (.bmp, .gif, .tif, .webp, ...), rather than silently dropping it.
  /// Files with other extensions are ignored, as torchvision does.
  ImageFolder(const std::filesystem::path& root, InputSpec spec, Transform transform = {});
  /// `input_shape`: the model's [1, C, S, S] (FeatureExtractor::input_spec()).
  ImageFolder(const std::filesystem::path& root, const Shape& input_shape, Transform transform = {});

  std::int64_t size() const override { return static_cast<std::int64_t>(files_.size()); }
  InputSpec spec() const override { return spec_; }
  std::optional<Tensor> labels() const override;
  int num_classes() const override { return static_cast<int>(classes_.size()); }
  std::vector<std::string> class_names() const override { return classes_; }
  std::string describe() const override;

  const std::filesystem::path& root() const noexcept { return root_; }
  const std::filesystem::path& file(std::int64_t index) const;
  int label(std::int64_t index) const;
  std::optional<Transform> transform() const override { return transform_; }

 protected:
  /// Decodes and transforms one file; IoError / FormatError naming the file when it is
  /// unreadable or corrupt.
  void load(std::int64_t index, float* out) const override;

 private:
  std::filesystem::path root_;
  InputSpec spec_;
  Transform transform_;
  std::vector<std::string> classes_;
  std::vector<std::filesystem::path> files_;
  std::vector<int> labels_;
};

}  // namespace diffprobe::data
