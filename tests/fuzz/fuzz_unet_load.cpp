// UNet::load of a small model: the weights file (format sniffed), the config from its metadata or
// inferred from the shapes, strict validation of the state dict, and building the model.
#include <cstddef>
#include <cstdint>

#include "diffprobe/model/unet.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    const UNet net = UNet::load(path);
    (void)net.block_infos();
  });
  return 0;
}
