// io::load_torch_checkpoint: the entry point that sniffs a PyTorch checkpoint's format and takes
// the zip path (zip reader, data.pkl through the restricted unpickler, storages as entries) or
// the legacy path (magic, protocol and sys-info pickles, the state dict, storage keys, raw
// storages); every tensor that loads is read end to end.
#include <cstddef>
#include <cstdint>

#include "diffprobe/io/torch_checkpoint.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    (void)io::detect_weights_format(path);
    const io::NamedTensors t = io::load_torch_checkpoint(path);
    std::uint64_t h = 0;
    for (const auto& [name, tensor] : t) h += fuzz::touch(tensor) + name.size();
    fuzz::keep(h);
  });
  return 0;
}
