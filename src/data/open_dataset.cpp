#include "diffprobe/data/open_dataset.hpp"

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/idx_dataset.hpp"
#include "diffprobe/data/image_folder.hpp"
#include "diffprobe/data/npy_dataset.hpp"

namespace diffprobe::data {
namespace fs = std::filesystem;

std::unique_ptr<Dataset> open_dataset(const fs::path& input, const std::optional<fs::path>& labels,
                                      const InputSpec& spec, std::int64_t limit, const Transform& transform) {
  std::error_code ec;
  if (fs::is_directory(input, ec)) {
    if (labels) throw ArgumentError("open_dataset", "an image folder takes its labels from its sub-folders");
    return std::make_unique<ImageFolder>(input, spec, transform);
  }
  if (!fs::exists(input, ec)) throw IoError(input.string(), "no such file or folder");
  if (input.extension() == ".npy") {
    if (transform.random())
      throw ArgumentError("open_dataset",
                          input.string() +
                              " holds model inputs as they are; augmentation needs images (an "
                              "image folder or an IDX file)");
    return std::make_unique<NpyDataset>(input, labels);
  }
  IdxOptions o;
  o.limit = limit;
  o.transform = transform;
  return std::make_unique<IdxDataset>(input, labels, spec, o);
}

}  // namespace diffprobe::data
