// io::load_idx through gzip: the input is an IDX file the target compresses first, so mutations
// reach the IDX parser behind a valid gzip stream (fuzz_idx mutates the compressed bytes).
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffprobe/io/idx.hpp"
#include "fuzz_common.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> gz(compressBound(static_cast<uLong>(size)) + 64);
  z_stream z{};
  if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  z.next_in = const_cast<Bytef*>(data);
  z.avail_in = static_cast<uInt>(size);
  z.next_out = gz.data();
  z.avail_out = static_cast<uInt>(gz.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  gz.resize(z.total_out);
  deflateEnd(&z);
  const auto& path = fuzz::input_file(gz.data(), gz.size());
  fuzz::expect_only_diffprobe_errors([&] {
    const Tensor t = io::load_idx(path, 0);
    fuzz::keep(fuzz::touch(t));
  });
  return 0;
}
