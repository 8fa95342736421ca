#pragma once
// FeatureWriter's progress record (PATH.partial/progress.json): the options and metadata the run
// was started with, the tensors every chunk holds, and the chunks done. One struct, read and
// written in one place each.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "diffprobe/core/dtype.hpp"

namespace diffprobe::detail {

struct WriterProgress {
  struct ChunkTensor {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::int64_t> sample_shape;  // shape without dim 0
  };
  std::int64_t total = 0;
  std::int64_t chunk_size = 0;
  bool labels = false;
  std::string store;  // dtype name of the finished file
  std::map<std::string, std::string> metadata;
  std::vector<ChunkTensor> tensors;  // empty until the first chunk is written
  std::vector<std::int64_t> done;    // ascending
  struct Skipped {
    std::int64_t row = 0;
    std::string error;
  };
  std::vector<Skipped> skipped;  // rows of done chunks whose image could not be read

  std::string to_json() const;
  /// FormatError at `where` for text that is not JSON, not a progress record, or malformed (a
  /// missing key, a value of the wrong type, an integer out of range); the message says to
  /// delete `partial_dir` to start over.
  static WriterProgress from_json(const std::string& text, const std::string& where,
                                  const std::string& partial_dir);
};

}  // namespace diffprobe::detail
