// Head::load: a saved head's safetensors, its spec JSON (validated with upper bounds before the
// model is built), weights and standardisation; a head that loads computes logits for one sample.
#include <cstddef>
#include <cstdint>

#include "diffprobe/heads/head.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = fuzz::input_file(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    const Head head = Head::load(path);
    const HeadSpec& spec = head.spec();
    std::vector<Tensor> x;
    for (const Shape& s : spec.inputs) {
      std::vector<std::int64_t> dims{1};
      for (int i = 0; i < s.rank(); ++i) dims.push_back(s[i]);
      if (Shape(dims).numel() > (std::int64_t{1} << 20)) return;
      x.push_back(Tensor::zeros(Shape(dims)));
    }
    (void)head.logits(x);
  });
  return 0;
}
