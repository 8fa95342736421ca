// Int8Calibration::from_json (the int8 calibration file), then its JSON written and read back:
// the same calibration (what `extract --int8-calibration` and UNet::set_int8_calibration read).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "diffprobe/model/int8_calibration.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  fuzz::expect_only_diffprobe_errors([&] {
    const Int8Calibration c = Int8Calibration::from_json(json);
    const Int8Calibration again = Int8Calibration::from_json(c.to_json());
    if (again.scales != c.scales || again.images != c.images || again.timesteps != c.timesteps ||
        again.weights_sha256 != c.weights_sha256 || again.method != c.method)
      std::abort();  // what was accepted must survive its own file
    for (const auto& [name, scale] : c.scales)
      if (!(scale > 0.0f)) std::abort();
  });
  return 0;
}
