// The int8 precision around the convolution itself (whose numerics are rows of the op table,
// test_backend_ops.cpp): the calibration file, the recorder, the U-Net's int8 convolutions and
// calibration, per-image scales that make an image's features independent of its batch, and the
// typed errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "diffprobe/diffprobe.hpp"
#include "support/relative_error.hpp"

namespace fs = std::filesystem;
using namespace diffprobe;

namespace {

fs::path tmp(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("diffprobe_int8_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d / name;
}

Tensor random_images(const Shape& s, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  for (auto& x : v) x = u(rng);
  return Tensor::from_vector(s, v);
}

// Whether int8 runs here (AVX512-VNNI and BF16); the reason when not.
bool int8_available(std::string* why) {
  const ops::Conv2d conv(Tensor::zeros(Shape{4, 4, 1, 1}), Tensor(), {1, 0});
  ExecContext ctx;
  ctx.precision = Precision::INT8;
  try {
    (void)conv.forward(Tensor::zeros(Shape{1, 4, 2, 2}, DType::F32, Layout::NHWC), ctx);
    return true;
  } catch (const UnsupportedError& e) {
    *why = e.what();
    return false;
  }
}

#define REQUIRE_INT8()                                             \
  do {                                                             \
    std::string why;                                               \
    if (!int8_available(&why)) GTEST_SKIP() << "no int8: " << why; \
  } while (0)

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, na = 0, nb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += static_cast<double>(a[i]) * b[i];
    na += static_cast<double>(a[i]) * a[i];
    nb += static_cast<double>(b[i]) * b[i];
  }
  return d / std::sqrt(na * nb);
}

Int8Calibration sample_calibration() {
  Int8Calibration c;
  c.scales = {{"input_blocks.1.0.in_layers.2", 0.125f}, {"middle_block.1.qkv", 0.00390625f}};
  c.method = Int8ScaleMethod::Mean;
  c.images = 64;
  c.timesteps = {10, 90};
  c.weights_sha256 = std::string(64, 'f');
  c.config_json = UNetConfig::preset("fmnist_default").to_json();
  return c;
}

}  // namespace

TEST(Int8Calibration, RoundTripsThroughItsFile) {
  const Int8Calibration c = sample_calibration();
  const fs::path p = tmp("cal.json");
  c.save(p);
  const Int8Calibration r = Int8Calibration::load(p);
  EXPECT_EQ(r.scales, c.scales);
  EXPECT_EQ(r.method, c.method);
  EXPECT_EQ(r.images, c.images);
  EXPECT_EQ(r.timesteps, c.timesteps);
  EXPECT_EQ(r.weights_sha256, c.weights_sha256);
  EXPECT_EQ(UNetConfig::from_json(r.config_json), UNetConfig::from_json(c.config_json));
  EXPECT_EQ(r.to_json(), c.to_json());
}

TEST(Int8Calibration, RefusesWhatIsNotACalibrationFile) {
  EXPECT_THROW(Int8Calibration::load(tmp("missing.json")), IoError);
  const std::string good = sample_calibration().to_json();
  const auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{ not json", "not JSON"},
      {"[1, 2]", "not a JSON object"},
      {with("\"diffprobe.int8_calibration\"", "\"diffprobe.features\""), "not an int8 calibration file"},
      {with("\"format_version\": 1", "\"format_version\": 2"), "format_version"},
      {with("\"method\": \"mean\"", "\"method\": \"median\""), "'method'"},
      {with("\"images\": 64", "\"images\": -1"), "'images'"},
      {with("\"timesteps\": [", "\"timesteps\": [\"x\", "), "'timesteps'"},
      {with("\"weights_sha256\": \"", "\"weights_sha256\": 7, \"x\": \""), "'weights_sha256'"},
      {with("\"config\": {", "\"config\": 5, \"c\": {"), "'config'"},
      {with("0.125", "-0.5"), "input_blocks.1.0.in_layers.2"},
      {with("0.125", "0"), "[1e-30, 1e30]"},
      {with("0.125", "1e39"), "[1e-30, 1e30]"},
      {with("0.125", "1e-45"), "[1e-30, 1e30]"},
      {with("0.125", "\"big\""), "[1e-30, 1e30]"},
      {"{\"format\": \"diffprobe.int8_calibration\", \"format_version\": 1}", "'method' is missing"},
  };
  for (const auto& [text, why] : bad) {
    const fs::path p = tmp("bad.json");
    std::ofstream(p) << text;
    try {
      (void)Int8Calibration::load(p);
      ADD_FAILURE() << "accepted:\n" << text;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what() << "\nexpected: " << why;
      EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << "the message names the file";
    }
  }
  EXPECT_THROW(parse_int8_scale_method("median"), ArgumentError);
  EXPECT_EQ(parse_int8_scale_method("max"), Int8ScaleMethod::Max);
}

TEST(Int8Input, SettingIsValidatedAndSharedByCopies) {
  const ops::Conv2d conv(Tensor::zeros(Shape{4, 4, 3, 3}), Tensor::zeros(Shape{4}));
  EXPECT_EQ(conv.int8_input().mode, ops::Int8Input::Mode::PerImage);
  for (const float bad : {0.0f, -1.0f, 1e-38f, 1e31f, std::nanf(""), INFINITY})
    EXPECT_THROW(conv.set_int8_input({ops::Int8Input::Mode::Calibrated, bad}), ArgumentError) << bad;
  const ops::Conv2d copy = conv;
  conv.set_int8_input({ops::Int8Input::Mode::Calibrated, 0.5f});
  EXPECT_EQ(copy.int8_input().mode, ops::Int8Input::Mode::Calibrated);
  EXPECT_EQ(copy.int8_input().scale, 0.5f);
  conv.set_int8_input({ops::Int8Input::Mode::Bf16, 7.0f});  // a scale means nothing there
  EXPECT_EQ(copy.int8_input().scale, 0.0f);
  EXPECT_THROW(ops::Conv2d().set_int8_input({}), ArgumentError);
  EXPECT_STREQ(ops::int8_mode_name(ops::Int8Input::Mode::PerImage), "per-image");
}

TEST(Int8Conv, PerImageScalesMakeAnImageIndependentOfItsBatch) {
  REQUIRE_INT8();
  const Tensor w = random_images(Shape{16, 8, 3, 3}, 1), b = random_images(Shape{16}, 2);
  const ops::Conv2d conv(w, b);
  Tensor x = random_images(Shape{3, 8, 6, 6}, 3);
  // Image 1 ten times larger: a per-batch scale would coarsen images 0 and 2.
  {
    float* p = x.data<float>() + 8 * 36;
    for (int i = 0; i < 8 * 36; ++i) p[i] *= 10.0f;
  }
  x = x.to_layout(Layout::NHWC);
  ExecContext ctx;
  ctx.precision = Precision::INT8;
  ctx.threads = 2;
  const Tensor all = conv.forward(x, ctx).to_layout(Layout::Contiguous);
  for (std::int64_t n = 0; n < 3; ++n) {
    const Tensor one = conv.forward(x.slice_batch(n, n + 1).clone(), ctx).to_layout(Layout::Contiguous);
    const std::vector<float> a = all.slice_batch(n, n + 1).to_vector(), o = one.to_vector();
    EXPECT_EQ(a, o) << "image " << n << " depends on its batch";
  }
  // NaN in an image: a typed error, not garbage.
  Tensor bad = x.clone();
  bad.data<float>()[5] = std::nanf("");
  EXPECT_THROW(conv.forward(bad, ctx), NumericError);
}

class Int8UNet : public ::testing::Test {
 protected:
  void SetUp() override { REQUIRE_INT8(); }
  UNet net = UNet::random(UNetConfig::preset("fmnist_default"), 3);
  Tensor x = random_images(Shape{4, 1, 32, 32}, 9);
  Tensor t = Tensor::from_vector(Shape{4}, std::vector<float>{10, 10, 300, 300});
  std::vector<int> blocks{9, 0};

  std::map<int, Tensor> run(Precision p, const Tensor& images) const {
    ExecContext ctx;
    ctx.precision = p;
    ctx.threads = 2;
    return net.forward(images, images.dim(0) == 4 ? t : t.slice_batch(0, images.dim(0)).clone(), {}, blocks,
                       ctx);
  }
};

TEST_F(Int8UNet, TheFirstAndTheOutputConvolutionStayBf16) {
  const auto names = net.int8_convolutions();
  EXPECT_EQ(names.size(), 74u);
  EXPECT_EQ(std::count(names.begin(), names.end(), "input_blocks.0.0"), 0);
  EXPECT_EQ(std::count(names.begin(), names.end(), "out.2"), 0);
  EXPECT_EQ(std::count(names.begin(), names.end(), "input_blocks.1.0.in_layers.2"), 1);
  EXPECT_EQ(std::count(names.begin(), names.end(), "middle_block.1.qkv"), 1);
}

TEST_F(Int8UNet, PerImageAndCalibratedStayCloseToFp32) {
  const auto ref = run(Precision::FP32, x);
  const auto per_image = run(Precision::INT8, x);
  Int8Calibration cal;
  {
    const Int8CalibrationRecorder rec(net);
    (void)run(Precision::BF16, random_images(Shape{4, 1, 32, 32}, 21));  // other images than x
    EXPECT_EQ(rec.images_seen(), 4);
    cal = rec.result();
  }
  EXPECT_EQ(cal.scales.size(), net.int8_convolutions().size()) << "the full forward reaches every one";
  net.set_int8_calibration(cal);
  ASSERT_NE(net.int8_calibration(), nullptr);
  const auto calibrated = run(Precision::INT8, x);
  net.clear_int8_calibration();
  EXPECT_EQ(net.int8_calibration(), nullptr);
  EXPECT_EQ(run(Precision::INT8, x).at(0).to_vector(), per_image.at(0).to_vector()) << "cleared";
  for (const int b : blocks) {
    const auto r = ref.at(b).to_vector();
    const auto p = per_image.at(b).to_vector(), c = calibrated.at(b).to_vector();
    EXPECT_NE(p, c) << "block " << b << ": calibrated scales must be used";
    const double cp = cosine(p, r), cc = cosine(c, r);
    std::printf("[int8] block %d: cosine to fp32 per-image %.6f, calibrated %.6f\n", b, cp, cc);
    EXPECT_GE(cp, 0.995) << "block " << b;
    EXPECT_GE(cc, 0.995) << "block " << b;
    EXPECT_GT(test_support::worst_relative_error(per_image.at(b), ref.at(b)), 0.0);
  }
  // Per-image scales: an image's features do not depend on the other images of its batch.
  const auto first = run(Precision::INT8, x.slice_batch(0, 1).clone());
  EXPECT_EQ(first.at(9).to_vector(), per_image.at(9).slice_batch(0, 1).to_vector());
}

TEST_F(Int8UNet, RecorderAndCalibrationErrors) {
  {
    const Int8CalibrationRecorder rec(net);
    EXPECT_THROW(Int8CalibrationRecorder{net}, ArgumentError) << "one recorder per model";
    EXPECT_THROW(rec.result(), ArgumentError) << "nothing recorded";
    // A forward to block 2 reaches one int8 layer: only its convolutions get scales.
    const int two[1] = {2};
    ExecContext ctx;
    (void)net.forward(x, t, {}, two, ctx);
    const Int8Calibration c = rec.result(Int8ScaleMethod::Mean);
    EXPECT_EQ(c.scales.size(), 2u);
    EXPECT_EQ(c.method, Int8ScaleMethod::Mean);
  }
  EXPECT_NO_THROW(Int8CalibrationRecorder{net}) << "detached when destroyed";

  Int8Calibration other;
  other.scales = {{"input_blocks.0.0", 0.1f}};  // the first convolution is not an int8 one
  EXPECT_THROW(net.set_int8_calibration(other), ConfigError);
  other.scales = {{"input_blocks.99.0.in_layers.2", 0.1f}};
  EXPECT_THROW(net.set_int8_calibration(other), ConfigError);
  other.scales = {{"input_blocks.1.0.in_layers.2", 0.1f}};
  UNetConfig cfg = net.config();
  cfg.num_channels = 64;
  other.config_json = cfg.to_json();
  EXPECT_THROW(net.set_int8_calibration(other), ConfigError) << "another model's configuration";
  other.config_json.clear();
  EXPECT_NO_THROW(net.set_int8_calibration(other));
  other.scales.begin()->second = -1.0f;
  EXPECT_THROW(net.set_int8_calibration(other), ConfigError);
}
