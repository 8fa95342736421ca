#include "diffprobe/data/npy_dataset.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "diffprobe/core/error.hpp"
#include "diffprobe/io/npy.hpp"

namespace diffprobe::data {

NpyDataset::NpyDataset(const std::filesystem::path& images,
                       const std::optional<std::filesystem::path>& labels, std::optional<InputSpec> expect)
    : path_(images) {
  const std::string where = images.string();
  images_ = io::load_npy(images);
  if (!is_floating(images_.dtype()))
    throw DTypeError(where,
                     fmt::format("expected floating images, the array is {}", dtype_name(images_.dtype())));
  if (images_.rank() != 4)
    throw ShapeError(where, "expected images [N, C, S, S], the array is " + images_.shape().str());
  if (images_.dim(2) != images_.dim(3) || images_.dim(0) < 1 || images_.dim(1) < 1 || images_.dim(2) < 1)
    throw ShapeError(where,
                     "expected non-empty square images [N, C, S, S], the array is " + images_.shape().str());
  if (images_.dtype() != DType::F32) images_ = images_.to_dtype(DType::F32);
  spec_ = InputSpec{static_cast<int>(images_.dim(1)), static_cast<int>(images_.dim(2))};
  if (expect && !(*expect == spec_))
    throw ShapeError(where, "the model takes " + expect->str() + " inputs, the array holds " + spec_.str());
  if (labels) {
    const std::string lwhere = labels->string();
    Tensor l = io::load_npy(*labels);
    if (l.dtype() != DType::I64 && l.dtype() != DType::I32)
      throw DTypeError(lwhere,
                       fmt::format("expected integer labels, the array is {}", dtype_name(l.dtype())));
    if (l.rank() != 1 || l.dim(0) != images_.dim(0))
      throw ShapeError(lwhere, fmt::format("expected labels [{}] (one per image), the array is {}",
                                           images_.dim(0), l.shape().str()));
    Tensor out = Tensor::empty({l.dim(0)}, DType::I64);
    auto* o = out.data<std::int64_t>();
    std::int64_t max_label = 0;
    for (std::int64_t i = 0; i < l.dim(0); ++i) {
      o[i] = l.dtype() == DType::I64 ? l.data<std::int64_t>()[i] : l.data<std::int32_t>()[i];
      if (o[i] < 0 || o[i] > INT32_MAX)
        throw FormatError(lwhere, fmt::format("label {} at index {} is out of range", o[i], i));
      max_label = std::max(max_label, o[i]);
    }
    num_classes_ = static_cast<int>(max_label) + 1;
    labels_ = out;
  }
}

std::optional<Tensor> NpyDataset::labels() const { return labels_; }

std::vector<std::string> NpyDataset::class_names() const {
  std::vector<std::string> names;
  for (int i = 0; i < num_classes_; ++i) names.push_back(std::to_string(i));
  return names;
}

std::string NpyDataset::describe() const {
  return fmt::format("npy {}: {} preprocessed images {}, used as stored", path_.string(), size(),
                     spec_.str());
}

void NpyDataset::load(std::int64_t index, float* out) const {
  const std::size_t per = static_cast<std::size_t>(images_.numel() / images_.dim(0));
  std::memcpy(out, images_.data<float>() + static_cast<std::size_t>(index) * per, per * sizeof(float));
}

}  // namespace diffprobe::data
