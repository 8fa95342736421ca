// FileAccess::Map vs Read: what happens when a weights file is truncated while it is in use.
// Mapped, the process is stopped by SIGBUS on the first read of a page past the new end (checked
// in a child process); read whole, the loaded tensors are unaffected.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>

#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/io/torch_checkpoint.hpp"
#include "diffprobe/model/unet.hpp"

namespace fs = std::filesystem;
using namespace diffprobe;

namespace {

fs::path dir() {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "file_access_test";
  fs::create_directories(d);
  return d;
}

// A 4 MiB safetensors file of known values.
fs::path write_file(const std::string& name) {
  const fs::path p = dir() / name;
  std::vector<float> v(1 << 20);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 1000) * 0.5f;
  io::NamedTensors t;
  t.set("w", Tensor::from_vector(Shape{static_cast<std::int64_t>(v.size())}, v));
  io::save_safetensors(p, t);
  return p;
}

double sum(const Tensor& t) {
  double s = 0;
  const float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) s += p[i];
  return s;
}

}  // namespace

TEST(FileAccess, ReadWholeIsUnaffectedByATruncatedFile) {
  const fs::path p = write_file("read.safetensors");
  const double want = sum(io::load_safetensors(p).at("w"));
  const io::NamedTensors t = io::load_weights(p, io::FileAccess::Read);
  fs::resize_file(p, 100);  // truncated while the tensors are alive
  EXPECT_EQ(sum(t.at("w")), want);
}

TEST(FileAccess, MappedAndTruncatedStopsTheProcessWithSigbus) {
  const fs::path p = write_file("mapped.safetensors");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const io::NamedTensors t = io::load_safetensors(p, io::FileAccess::Map);  // no page touched yet
    std::error_code ec;
    fs::resize_file(p, 100, ec);
    if (ec) ::_exit(3);
    volatile double s = sum(t.at("w"));  // reads pages that no longer exist
    (void)s;
    ::_exit(0);  // reached only if the truncation went unnoticed
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << "could not truncate the file";
  // SIGBUS, or under AddressSanitizer (which handles SIGBUS) its report and exit status 1.
  const bool sigbus = WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS;
  const bool asan = WIFEXITED(status) && WEXITSTATUS(status) == 1;
  EXPECT_TRUE(sigbus || asan) << "status " << status << ": the read of a truncated mapping did not fault";
}

TEST(FileAccess, UNetLoadsTheSameEitherWay) {
  const fs::path model = fs::path(DIFFPROBE_SOURCE_DIR) / "models" / "fmnist_default.safetensors";
  const UNet a = UNet::load(model);
  const UNet b = UNet::load(model, {.file_access = io::FileAccess::Read});
  EXPECT_EQ(a.num_parameters(), b.num_parameters());
  const Tensor x = Tensor::zeros(a.input_shape(1));
  const Tensor t = Tensor::from_vector(Shape{1}, std::vector<float>{10.0f});
  EXPECT_EQ(a.forward(x, t).to_vector(), b.forward(x, t).to_vector());
}
