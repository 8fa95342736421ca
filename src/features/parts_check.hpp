#pragma once
// The check shared by FeatureFile::open_parts and FeatureRows::open: the files are every part of
// one sharded extraction, in shard order (part.shard, part.rows contiguous, part.total_rows, the
// same metadata but for part.* and the same features). Returns that common metadata.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "diffprobe/features/feature_file.hpp"

namespace diffprobe::detail {

std::map<std::string, std::string> check_parts(const std::vector<FeatureFile>& parts,
                                               const std::vector<std::filesystem::path>& paths);

}  // namespace diffprobe::detail
