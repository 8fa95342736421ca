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
#include "io/mapped_file.hpp"  // in_file_mapping, release_file_pages

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

// Pages handed back after the load-time finiteness check (UNet::from_weights) must be those of a
// file mapping only, and handing them back must not change what the tensors hold.
TEST(FileAccess, OnlyFileMappedPagesAreHandedBackAndTheirValuesStay) {
  const fs::path p = write_file("release.safetensors");
  const double want = sum(io::load_safetensors(p, io::FileAccess::Read).at("w"));
  {
    const io::NamedTensors mapped = io::load_safetensors(p, io::FileAccess::Map);
    const Tensor& w = mapped.at("w");
    EXPECT_TRUE(io::detail::in_file_mapping(w.raw(), w.nbytes()));
    EXPECT_FALSE(io::detail::in_file_mapping(w.raw(), w.nbytes() + (std::size_t{64} << 20)));  // runs past it
    EXPECT_EQ(sum(w), want);  // every page touched
    io::detail::release_file_pages(w.raw(), w.nbytes());
    EXPECT_EQ(sum(w), want);  // read again from the file
  }
  const io::NamedTensors read = io::load_safetensors(p, io::FileAccess::Read);
  EXPECT_FALSE(io::detail::in_file_mapping(read.at("w").raw(), read.at("w").nbytes()));
  // Anonymous memory is never advised: a heap tensor written in place keeps its values.
  Tensor heap = Tensor::from_vector(Shape{1 << 20}, std::vector<float>(1 << 20, 3.0f));
  io::detail::release_file_pages(heap.raw(), heap.nbytes());
  EXPECT_EQ(sum(heap), 3.0 * (1 << 20));
  // A mapping that is gone is no longer one.
  const void* gone = nullptr;
  {
    const io::NamedTensors t = io::load_safetensors(p, io::FileAccess::Map);
    gone = t.at("w").raw();
  }
  EXPECT_FALSE(io::detail::in_file_mapping(gone, 4));
}

// A tensor edited in place after loading (copy-on-write pages) keeps the edit when its pages are
// handed back: only clean file pages are dropped.
TEST(FileAccess, EditedMappedTensorKeepsItsEditAfterPagesAreHandedBack) {
  const fs::path p = write_file("edited.safetensors");
  const io::NamedTensors t = io::load_safetensors(p, io::FileAccess::Map);
  Tensor w = t.at("w");
  w.data<float>()[12345] = -7.0f;
  io::detail::release_file_pages(w.raw(), w.nbytes());
  EXPECT_EQ(w.data<float>()[12345], -7.0f);
}
