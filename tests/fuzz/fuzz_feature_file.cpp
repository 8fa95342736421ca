// FeatureFile::open (safetensors + metadata validation: format marker, t/block lists, N, labels)
// and, when it opens, FeatureRows over its first feature (pread, f16/bf16 rows converted).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/features/feature_rows.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    const FeatureFile f = FeatureFile::open(path);
    std::uint64_t h = 0;
    for (const auto& name : f.names()) h += fuzz::touch(f.feature(name));
    if (const auto labels = f.labels()) h += fuzz::touch(*labels);
    (void)f.metadata().to_strings();
    if (f.names().empty()) return;
    const FeatureRows rows = FeatureRows::open({path}, f.names().front());
    const std::int64_t n = std::min<std::int64_t>(rows.rows(), 4);
    std::vector<float> out(static_cast<std::size_t>(n * rows.row_size()));
    rows.read_range(0, n, out.data());
    fuzz::keep(h);
  });
  return 0;
}
