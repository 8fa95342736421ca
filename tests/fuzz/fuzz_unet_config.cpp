// UNetConfig::from_json + validate(), then everything derived from a valid config without weights
// (block infos, parameter count: the sizes a hostile config could overflow).
#include <cstddef>
#include <cstdint>
#include <string>

#include "diffprobe/model/unet.hpp"
#include "diffprobe/model/unet_config.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  fuzz::expect_only_diffprobe_errors([&] {
    const UNetConfig c = UNetConfig::from_json(json);
    c.validate();
    (void)c.to_json();
    (void)unet_num_parameters(c);
    (void)unet_block_infos(c);
  });
  return 0;
}
