#pragma once
// One entry point from a path to a data set: an image folder (ImageFolder), a .npy array of model
// inputs (NpyDataset) or an IDX images file (IdxDataset), as `diffprobe extract --input` takes.
#include <filesystem>
#include <memory>
#include <optional>

#include "diffprobe/data/dataset.hpp"
#include "diffprobe/data/transform.hpp"

namespace diffprobe::data {

/// `input`: a folder (class sub-folders; `labels` must be empty), a .npy f32 [N, C, S, S]
/// (`labels`: .npy), else an IDX images file (`labels`: IDX). `limit` > 0 keeps the first
/// samples (IDX reads only those). IoError when `input` does not exist; ArgumentError for labels
/// with a folder, or a random transform (augmentation) with .npy inputs, which are stored as is.
std::unique_ptr<Dataset> open_dataset(const std::filesystem::path& input,
                                      const std::optional<std::filesystem::path>& labels,
                                      const InputSpec& spec, std::int64_t limit = 0,
                                      const Transform& transform = {});

}  // namespace diffprobe::data
