// io::load_idx on the input as it is: plain IDX, or gzip (zlib's gz* functions read both); the
// seeds hold both kinds. Loaded whole and with a sample limit.
#include <cstddef>
#include <cstdint>

#include "diffprobe/io/idx.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  for (const std::int64_t limit : {std::int64_t{0}, std::int64_t{3}})
    fuzz::expect_only_diffprobe_errors([&] {
      const Tensor t = io::load_idx(path, limit);
      fuzz::keep(fuzz::touch(t));
    });
  return 0;
}
