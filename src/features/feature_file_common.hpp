#pragma once
// What the feature-file sources share (feature_metadata.cpp, feature_file.cpp, feature_writer.cpp):
// the writer's identification, the canonical order and checks of a set of tensors to save, and
// small text helpers.
#include <string>
#include <utility>
#include <vector>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::detail {

/// "diffprobe X.Y.Z": recorded in every file's metadata 'library'.
std::string library_string();

/// A complete set of named tensors in canonical order: features by (t, block), then labels.
struct CheckedTensors {
  std::vector<std::pair<std::string, Tensor>> items;
};
/// Checks names, dtypes and the common N; ArgumentError / DTypeError / ShapeError at `where`.
CheckedTensors check_for_save(const std::vector<std::pair<std::string, Tensor>>& in, const char* where);

/// "a, b, c", or "none".
std::string list_names(const std::vector<std::string>& names);

}  // namespace diffprobe::detail
