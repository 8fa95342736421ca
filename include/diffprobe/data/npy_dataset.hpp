#pragma once
// Images already preprocessed into a .npy f32 [N, C, S, S] array (NCHW), used as stored; labels
// optionally from a second .npy of integers [N]. The array is memory-mapped, so a batch reads
// only its own pages.
#include <filesystem>
#include <optional>

#include "diffprobe/data/dataset.hpp"

namespace diffprobe::data {

class NpyDataset : public Dataset {
 public:
  /// FormatError / DTypeError / ShapeError when the array is not floating [N, C, S, S] (square)
  /// or the labels are not integer [N] with values >= 0; ShapeError when `expect` is given and
  /// differs from the array's C and S.
  NpyDataset(const std::filesystem::path& images, const std::optional<std::filesystem::path>& labels = {},
             std::optional<InputSpec> expect = {});

  std::int64_t size() const override { return images_.dim(0); }
  InputSpec spec() const override { return spec_; }
  std::optional<Tensor> labels() const override;
  int num_classes() const override { return num_classes_; }
  std::vector<std::string> class_names() const override;
  std::string describe() const override;

 protected:
  void load(std::int64_t index, float* out) const override;
  bool parallel_load() const override { return false; }

 private:
  std::filesystem::path path_;
  Tensor images_;  // f32 [N, C, S, S]
  std::optional<Tensor> labels_;
  InputSpec spec_;
  int num_classes_ = 0;
};

}  // namespace diffprobe::data
