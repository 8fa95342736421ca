// io::load_npy: magic, version, header dict (descr, fortran_order, shape) and the data.
#include <cstddef>
#include <cstdint>

#include "diffprobe/io/npy.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    const Tensor t = io::load_npy(path);
    fuzz::keep(fuzz::touch(t));
  });
  return 0;
}
