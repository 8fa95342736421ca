#pragma once
// MNIST / Fashion-MNIST IDX files (gzipped or not) as model inputs. The grey mapping rule (the
// one the bundled Fashion-MNIST model was trained with, tools/train/train_fmnist.py):
//   v (uint8) -> v / 127.5 - 1;
//   a square side-s image with S >= s and S - s even is padded with 0 (-1 after scaling, the
//   background) by (S - s) / 2 on each side (28 -> 32 pads 2); any other size goes through the
//   options' transform (data/transform.hpp; by default Adm's center_crop_arr), so it equals the
//   same image read through ImageFolder;
//   a random transform (augmentation) is applied to the padded S x S image;
//   grey is replicated to every channel when the model takes C > 1 channels.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "diffprobe/data/dataset.hpp"
#include "diffprobe/data/transform.hpp"

namespace diffprobe::data {

struct IdxOptions {
  std::int64_t limit = 0;                // > 0: only the first `limit` samples
  std::vector<std::string> class_names;  // empty: "0", "1", ...
  Transform transform;                   // geometry (unused by the padding rule unless random)
};

class IdxDataset : public Dataset {
 public:
  /// images: unsigned-byte IDX [N, H, W]; labels (optional): IDX [N] with values >= 0.
  /// FormatError when the files are not like that or their counts differ (checked on the full
  /// files, also with a limit); IoError when a file cannot be read. num_classes() is the largest
  /// label of the whole labels file + 1 (or class_names.size(), which must cover every label).
  IdxDataset(const std::filesystem::path& images, const std::optional<std::filesystem::path>& labels,
             InputSpec spec, IdxOptions options = {});

  std::int64_t size() const override { return n_; }
  InputSpec spec() const override { return spec_; }
  std::optional<Tensor> labels() const override;
  int num_classes() const override { return num_classes_; }
  std::vector<std::string> class_names() const override;
  std::string describe() const override;

  /// The stored image size (H, W).
  int image_height() const noexcept { return h_; }
  int image_width() const noexcept { return w_; }
  /// True when the mapping pads (rather than resizes).
  bool pads() const noexcept;
  std::optional<Transform> transform() const override { return transform_; }

  /// Fashion-MNIST's ten class names, in label order.
  static std::vector<std::string> fashion_mnist_classes();

 protected:
  void load(std::int64_t index, float* out) const override;
  bool parallel_load() const override { return !pads() || transform_.random(); }

 private:
  std::filesystem::path path_;
  InputSpec spec_;
  std::int64_t n_ = 0;
  int h_ = 0, w_ = 0;
  std::vector<std::uint8_t> pixels_;  // [N, H, W]
  std::vector<std::int64_t> labels_;
  bool has_labels_ = false;
  int num_classes_ = 0;
  std::vector<std::string> class_names_;
  Transform transform_;
};

}  // namespace diffprobe::data
