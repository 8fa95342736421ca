// Bit-exactness against PIL (the library torchvision and guided-diffusion preprocess with):
// tests/unit/make_images.py writes PNG/JPEG files of many modes with PIL and PIL's own results
// (decoded pixels, bicubic and box resizes, torchvision's eval preprocessing and guided-diffusion's
// center_crop_arr); diffprobe must reproduce them exactly. Skipped when python3-pil is not
// installed (scripts/setup.sh installs it).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "diffprobe/data/image_folder.hpp"
#include "diffprobe/data/resize.hpp"
#include "diffprobe/io/npy.hpp"

using namespace diffprobe;
using namespace diffprobe::data;
namespace fs = std::filesystem;

namespace {

constexpr int kSize = 32;

class PilReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("diffprobe_test_data_pil_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string cmd = "/usr/bin/python3 " +
                            (fs::path(DIFFPROBE_SOURCE_DIR) / "tests/unit/make_images.py").string() + " " +
                            dir_.string() + " " + std::to_string(kSize);
    rc_ = std::system(cmd.c_str());
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  void SetUp() override {
    if (WIFEXITED(rc_) && WEXITSTATUS(rc_) == 3) GTEST_SKIP() << "PIL (python3-pil) is not installed";
    ASSERT_EQ(rc_, 0) << "tests/unit/make_images.py failed (python3 with numpy needed)";
  }
  // The files make_images.py includes in its expectations (16-bit PNGs are left out).
  static std::vector<std::int64_t> compared(const ImageFolder& ds) {
    std::vector<std::int64_t> idx;
    for (std::int64_t i = 0; i < ds.size(); ++i)
      if (ds.file(i).filename().string().find("16bit") == std::string::npos) idx.push_back(i);
    return idx;
  }
  static inline fs::path dir_;
  static inline int rc_ = -1;
};

}  // namespace

TEST_F(PilReference, DecodedPixelsAreIdentical) {
  ImageFolder ds(dir_ / "folder", InputSpec{3, kSize});
  const auto idx = compared(ds);
  ASSERT_EQ(idx.size(), 11u);
  for (std::size_t k = 0; k < idx.size(); ++k) {
    const Image img = convert_channels(read_image(ds.file(idx[k])), 3);
    const Tensor ref = io::load_npy(dir_ / "decoded" / (std::to_string(k) + ".npy"));  // u8 -> i32 [H, W, 3]
    ASSERT_EQ(ref.shape(), (Shape{img.height, img.width, 3})) << ds.file(idx[k]);
    int mismatches = 0;
    for (std::size_t i = 0; i < img.samples.size(); ++i)
      mismatches += img.samples[i] != ref.data<std::int32_t>()[i];
    EXPECT_EQ(mismatches, 0) << ds.file(idx[k]);
  }
}

namespace {

// Every case of make_images.py's resize/ or box/ folder through resize(); returns the count.
int check_resize_cases(const fs::path& dir, ResampleFilter filter) {
  std::ifstream cases(dir / "cases.txt");
  int w, h, c, W, H, k = 0;
  while (cases >> w >> h >> c >> W >> H) {
    const Tensor in = io::load_npy(dir / ("in_" + std::to_string(k) + ".npy"));
    const Tensor out = io::load_npy(dir / ("out_" + std::to_string(k) + ".npy"));
    Image img = Image::blank(w, h, c);
    for (std::size_t i = 0; i < img.samples.size(); ++i)
      img.samples[i] = static_cast<std::uint16_t>(in.data<std::int32_t>()[i]);
    const Image r = resize(img, W, H, filter);
    EXPECT_EQ(static_cast<std::int64_t>(r.samples.size()), out.numel());
    if (static_cast<std::int64_t>(r.samples.size()) != out.numel()) return -1;
    int mismatches = 0, worst = 0;
    for (std::size_t i = 0; i < r.samples.size(); ++i) {
      const int d = std::abs(r.samples[i] - out.data<std::int32_t>()[i]);
      mismatches += d != 0;
      worst = std::max(worst, d);
    }
    EXPECT_EQ(mismatches, 0) << w << "x" << h << "x" << c << " -> " << W << "x" << H << " (worst " << worst
                             << ")";
    ++k;
  }
  return k;
}

double worst_difference(const Tensor& x, const Tensor& ref) {
  const auto a = x.to_vector(), b = ref.to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  return worst;
}

}  // namespace

TEST_F(PilReference, BicubicResizeIsBitExact) {
  EXPECT_EQ(check_resize_cases(dir_ / "resize", ResampleFilter::Bicubic), 8);
}

TEST_F(PilReference, BoxResizeIsBitExact) {
  EXPECT_EQ(check_resize_cases(dir_ / "box", ResampleFilter::Box), 7);
}

TEST_F(PilReference, AdmPreprocessingEqualsCenterCropArr) {
  // Every file, 16-bit PNGs included (read as PIL reads them), through guided-diffusion's
  // convert + center_crop_arr + v / 127.5 - 1.
  for (int channels : {3, 1}) {
    ImageFolder ds(dir_ / "folder", InputSpec{channels, kSize});  // the default: Preprocess::Adm
    const Tensor x = ds.images(0, ds.size());
    const Tensor ref =
        io::load_npy(dir_ / (channels == 3 ? "expected_adm_rgb.npy" : "expected_adm_grey.npy"));
    ASSERT_EQ(x.shape(), ref.shape());
    EXPECT_EQ(worst_difference(x, ref), 0.0) << channels << " channel(s)";
  }
}

TEST_F(PilReference, EvalPreprocessingMatchesTorchvisionOnPil) {
  for (int channels : {3, 1}) {
    ImageFolder ds(dir_ / "folder", InputSpec{channels, kSize}, Transform::eval(Preprocess::Torchvision));
    const auto idx = compared(ds);
    const Tensor x = ds.images_at(idx);
    const Tensor ref = io::load_npy(dir_ / (channels == 3 ? "expected_rgb.npy" : "expected_grey.npy"));
    ASSERT_EQ(x.shape(), ref.shape());
    EXPECT_EQ(worst_difference(x, ref), 0.0) << channels << " channel(s)";
  }
}
