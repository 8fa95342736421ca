// Real photographs (scikit-image's samples: RGB, grey, RGBA, palette and 16-bit PNGs; baseline,
// progressive and grey JPEGs) against PIL: the adm preprocessing equals guided-diffusion's
// center_crop_arr bit for bit at S = 64 and 256, random_crop_arr with the same draws equals PIL's,
// and JPEG decoding equals PIL's (libjpeg-turbo in both). tests/unit/make_photos.py writes the
// files and PIL's results.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "diffprobe/data/image_folder.hpp"
#include "diffprobe/data/transform.hpp"
#include "diffprobe/io/npy.hpp"

using namespace diffprobe;
using namespace diffprobe::data;
namespace fs = std::filesystem;

namespace {

class Photos : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("diffprobe_test_photos_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string cmd = "/usr/bin/python3 " +
                            (fs::path(DIFFPROBE_SOURCE_DIR) / "tests/unit/make_photos.py").string() + " " +
                            dir_.string();
    rc_ = std::system(cmd.c_str());
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  void SetUp() override {
    ASSERT_EQ(rc_, 0)
        << "tests/unit/make_photos.py failed (python3-pil, python3-numpy and python3-skimage are "
           "needed: bash scripts/setup.sh)";
  }
  static inline fs::path dir_;
  static inline int rc_ = -1;
};

// Largest |a - b| and the number of differing values.
std::pair<double, std::int64_t> compare(const Tensor& x, const Tensor& ref) {
  const auto a = x.to_vector(), b = ref.to_vector();
  double worst = 0;
  std::int64_t differ = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    worst = std::max(worst, d);
    differ += d != 0;
  }
  return {worst, differ};
}

}  // namespace

TEST_F(Photos, AdmPreprocessingEqualsCenterCropArrBitForBit) {
  for (const auto& [size, channels, file] :
       {std::tuple{64, 3, "adm_64_rgb.npy"}, std::tuple{256, 3, "adm_256_rgb.npy"},
        std::tuple{64, 1, "adm_64_grey.npy"}}) {
    ImageFolder ds(dir_ / "folder", InputSpec{channels, size});
    ASSERT_EQ(ds.size(), 18);
    const Tensor ref = io::load_npy(dir_ / file);
    for (std::int64_t i = 0; i < ds.size(); ++i) {
      const Tensor x = ds.images(i, i + 1);
      const Tensor r = ref.slice_batch(i, i + 1);
      ASSERT_EQ(x.shape(), r.shape());
      const auto [worst, differ] = compare(x, r);
      EXPECT_EQ(differ, 0) << ds.file(i) << " at S = " << size << ", " << channels << " channel(s): worst "
                           << worst;
    }
  }
}

TEST_F(Photos, TorchvisionModeDiffersWhereTheRulesDiffer) {
  // The two modes agree only where no BOX halving, rounding or crop offset differs; on these
  // photos most differ (what made the adm mode necessary).
  ImageFolder adm(dir_ / "folder", InputSpec{3, 64});
  ImageFolder tv(dir_ / "folder", InputSpec{3, 64}, Transform::eval(Preprocess::Torchvision));
  int differing = 0;
  for (std::int64_t i = 0; i < adm.size(); ++i)
    differing += compare(adm.images(i, i + 1), tv.images(i, i + 1)).second > 0;
  std::printf("[photos] torchvision and adm preprocessing differ on %d of %lld photographs at S = 64\n",
              differing, static_cast<long long>(adm.size()));
  EXPECT_GE(differing, 12);
}

TEST_F(Photos, RandomCropArrWithTheSameDrawsEqualsPil) {
  ImageFolder ds(dir_ / "folder", InputSpec{3, 64});
  std::ifstream cases(dir_ / "random" / "cases.txt");
  int idx, size, side, top, left, k = 0;
  while (cases >> idx >> size >> side >> top >> left) {
    const Image img = convert_channels(to_pil_8bit(read_image(ds.file(idx))), 3);
    const Image crop = adm_resize(img, side, {left, top, size, size});
    const Tensor ref = io::load_npy(dir_ / "random" / ("out_" + std::to_string(k) + ".npy"));  // [S, S, 3]
    ASSERT_EQ(ref.shape(), (Shape{size, size, 3}));
    std::int64_t differ = 0;
    for (std::size_t i = 0; i < crop.samples.size(); ++i)
      differ += crop.samples[i] != ref.data<std::int32_t>()[i];
    EXPECT_EQ(differ, 0) << ds.file(idx) << " S = " << size << " side " << side;
    ++k;
  }
  EXPECT_EQ(k, 12);
}

TEST_F(Photos, JpegDecodingEqualsPil) {
  std::ifstream files(dir_ / "files.txt");
  int k, n = 0;
  std::string path;
  while (files >> k >> path) {
    const Image img = read_image(path);
    const Tensor ref = io::load_npy(dir_ / "decoded" / (std::to_string(k) + ".npy"));
    ASSERT_EQ(ref.shape(), (Shape{img.height, img.width, img.channels})) << path;
    std::int64_t differ = 0;
    for (std::size_t i = 0; i < img.samples.size(); ++i)
      differ += img.samples[i] != ref.data<std::int32_t>()[i];
    EXPECT_EQ(differ, 0) << path;
    ++n;
  }
  EXPECT_EQ(n, 6);
}
