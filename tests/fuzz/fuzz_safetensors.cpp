// io::load_safetensors: the header (length, JSON, dtypes, shapes, offsets) and the data
// section; every tensor that loads is read end to end.
#include <cstddef>
#include <cstdint>

#include "diffprobe/io/safetensors.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    const io::NamedTensors t = io::load_safetensors(path);
    std::uint64_t h = t.metadata.size();
    for (const auto& [name, tensor] : t) h += fuzz::touch(tensor) + name.size();
    fuzz::keep(h);
  });
  return 0;
}
