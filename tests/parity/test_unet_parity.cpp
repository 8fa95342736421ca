// Parity of the U-Net forward with the PyTorch reference (tests/reference/adm_unet.py) on small
// configurations that together cover every architecture variant. The reference randomises
// every weight (GroupNorm affine included), writes the weights in every checkpoint format the
// loader reads, and computes every block's output in float64.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "diffprobe/io/npy.hpp"
#include "diffprobe/model/unet.hpp"
#include "support/relative_error.hpp"

using namespace diffprobe;
using diffprobe::test_support::worst_relative_error;
namespace fs = std::filesystem;

namespace {

struct Case {
  std::string config;
  int batch;
  std::string t;
  std::string labels;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.config; }

// Batch 1 and 3, several t, labels for the class-conditional ones.
const Case kCases[] = {
    {"c01_s16_minimal", 1, "5", ""},
    {"c02_mult123_newattn_plain", 3, "0,500,999", ""},
    {"c03_classcond_sigma_nrb3", 3, "1,250,999", "0,9,4"},
    {"c04_s64_headch16_new", 1, "90", ""},
    {"c05_s16_mc64_nossn", 2, "17,600", ""},
    {"c06_classcond_layers", 2, "300,3", "1,4"},
    {"c07_single_level", 1, "42", ""},
    {"c08_s64_heads_upsample", 2, "150,900", ""},
    {"c09_half_mult", 3, "10,20,30", ""},
    {"c10_fmnist_default", 3, "90,150,300", ""},
    {"c11_adm_like", 1, "90", ""},
};

fs::path dump(const Case& c) {
  const fs::path out = fs::path(DIFFPROBE_BINARY_DIR) / "parity" / c.config;
  const fs::path marker = out / "manifest.json";
  const fs::path cfg = fs::path(DIFFPROBE_SOURCE_DIR) / "tests/parity/configs" / (c.config + ".json");
  if (fs::exists(marker) && fs::last_write_time(marker) > fs::last_write_time(cfg)) return out;
  std::string cmd = "/usr/bin/python3 " +
                    (fs::path(DIFFPROBE_SOURCE_DIR) / "tests/reference/adm_unet.py").string() +
                    " dump --config " + cfg.string() + " --seed 7 --batch " + std::to_string(c.batch) +
                    " --t " + c.t + (c.labels.empty() ? "" : " --labels " + c.labels) + " --out " +
                    out.string() + " > " + (out.string() + ".log") + " 2>&1";
  fs::create_directories(out.parent_path());
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::ifstream log(out.string() + ".log");
    std::stringstream ss;
    ss << log.rdbuf();
    ADD_FAILURE() << "the PyTorch reference failed (is python3-torch installed? run scripts/setup.sh):\n"
                  << cmd << "\n"
                  << ss.str();
  }
  return out;
}

class Parity : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(Parity, EveryBlockInEveryFormat) {
  const Case& c = GetParam();
  const fs::path dir = dump(c);
  ASSERT_TRUE(fs::exists(dir / "manifest.json"));
  const auto config = UNetConfig::from_json_file(dir / "config.json");
  const Tensor x = io::load_npy(dir / "input.npy");
  const Tensor t = io::load_npy(dir / "t.npy");
  const Tensor labels = config.class_cond ? io::load_npy(dir / "labels.npy") : Tensor();
  std::vector<int> blocks;
  for (int b = 0; b <= config.num_blocks(); ++b) blocks.push_back(b);

  struct Format {
    const char* file;
    const char* ref_prefix;
  };
  const Format formats[] = {{"weights.safetensors", "ref_b"},
                            {"weights_zip.pt", "ref_b"},
                            {"weights_legacy.pt", "ref_b"},
                            {"weights_flat_fp16.pt", "ref_fp16w_b"}};
  for (const auto& f : formats) {
    SCOPED_TRACE(f.file);
    LoadOptions opt;
    opt.config = config;
    const UNet net = UNet::load(dir / f.file, opt);
    ExecContext ctx;
    ctx.threads = 2;
    const auto out = net.forward(x, t, labels, blocks, ctx);
    double worst = 0;
    int worst_block = -1;
    std::string per_block;
    for (int b : blocks) {
      const Tensor ref = io::load_npy(dir / (std::string(f.ref_prefix) + std::to_string(b) + ".npy"));
      const double e = worst_relative_error(out.at(b), ref);
      EXPECT_LE(e, 1e-4) << "block " << b;
      char buf[48];
      std::snprintf(buf, sizeof buf, " b%d:%.1e", b, e);
      per_block += buf;
      if (e > worst || worst_block < 0) {
        worst = e;
        worst_block = b;
      }
    }
    std::printf("[parity] %-28s %-22s worst block %2d rel err %.2e |%s\n", c.config.c_str(), f.file,
                worst_block, worst, per_block.c_str());
  }
}

TEST_P(Parity, TruncatedForwardEqualsFullForward) {
  const Case& c = GetParam();
  const fs::path dir = dump(c);
  const auto config = UNetConfig::from_json_file(dir / "config.json");
  const UNet net = UNet::load(dir / "weights.safetensors");  // config from the file's metadata
  EXPECT_EQ(net.config(), config);
  const Tensor x = io::load_npy(dir / "input.npy");
  const Tensor t = io::load_npy(dir / "t.npy");
  const Tensor labels = config.class_cond ? io::load_npy(dir / "labels.npy") : Tensor();
  const int mid = net.num_input_blocks() + 1;
  const std::vector<int> one = {mid + 1};
  const auto a = net.forward(x, t, labels, one);
  const Tensor ref = io::load_npy(dir / ("ref_b" + std::to_string(mid + 1) + ".npy"));
  EXPECT_LE(worst_relative_error(a.at(mid + 1), ref), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Configs, Parity, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.config; });

namespace {

// Cosine similarity of the 2x2 average-pooled maps of sample n (what a probe sees), in double.
double pooled_cosine(const Tensor& ours, const Tensor& ref, std::int64_t n) {
  const Shape& s = ref.shape();
  const std::int64_t C = s[1], H = s[2], W = s[3];
  const std::int64_t ph = std::min<std::int64_t>(2, H), pw = std::min<std::int64_t>(2, W);
  double dot = 0, na = 0, nb = 0;
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t i = 0; i < ph; ++i)
      for (std::int64_t j = 0; j < pw; ++j) {
        double a = 0, b = 0;
        const std::int64_t h0 = i * H / ph, h1 = (i + 1) * H / ph, w0 = j * W / pw, w1 = (j + 1) * W / pw;
        for (std::int64_t h = h0; h < h1; ++h)
          for (std::int64_t w = w0; w < w1; ++w) {
            const std::int64_t logical = ((n * C + c) * H + h) * W + w;
            a += ours.item_at(logical);
            b += ref.item_at(logical);
          }
        dot += a * b;
        na += a * a;
        nb += b * b;
      }
  return dot / std::sqrt(na * nb);
}

}  // namespace

// The CPU's reduced precisions against the float64 reference: every block of every architecture
// variant, every weight random. bf16: bf16 operands, bf16 activations between the ops, fp32
// statistics, softmax and accumulation. int8: s8 convolutions (but the first and the output's)
// with each image's own input scales, or with scales calibrated on other images (the input's
// values in reverse order: the same distribution), the rest as bf16. Bounds: the worst error relative to the
// block's largest value and the worst sample's pooled cosine (docs/model_numerics.md has the measured
// values).
struct Reduced {
  const char* name;
  Precision precision;
  bool calibrated;
  double max_error, min_cosine;
};

void check_reduced(const Case& c, const Reduced& mode) {
  const fs::path dir = dump(c);
  const auto config = UNetConfig::from_json_file(dir / "config.json");
  UNet net = UNet::load(dir / "weights.safetensors");
  const Tensor x = io::load_npy(dir / "input.npy");
  const Tensor t = io::load_npy(dir / "t.npy");
  const Tensor labels = config.class_cond ? io::load_npy(dir / "labels.npy") : Tensor();
  std::vector<int> blocks;
  for (int b = 0; b <= config.num_blocks(); ++b) blocks.push_back(b);
  ExecContext ctx;
  ctx.threads = 2;
  ctx.precision = mode.precision;
  std::map<int, Tensor> out;
  try {
    if (mode.calibrated) {
      // Other images of the same distribution: the input's values in reverse order.
      std::vector<float> other = x.to_vector();
      std::reverse(other.begin(), other.end());
      const Int8CalibrationRecorder rec(net);
      ExecContext cal = ctx;
      cal.precision = Precision::FP32;
      (void)net.forward(Tensor::from_vector(x.shape(), other), t, labels, blocks, cal);
      net.set_int8_calibration(rec.result());
    }
    out = net.forward(x, t, labels, blocks, ctx);
  } catch (const UnsupportedError& e) {
    GTEST_SKIP() << "no " << mode.name << " on this CPU: " << e.what();
  }
  double worst_err = 0, worst_cos = 1;
  std::string per_block;
  for (int b : blocks) {
    const Tensor ref = io::load_npy(dir / ("ref_b" + std::to_string(b) + ".npy"));
    ASSERT_EQ(out.at(b).dtype(), DType::F32);
    const double e = worst_relative_error(out.at(b), ref);
    double cos = 1;
    for (std::int64_t n = 0; n < ref.dim(0); ++n) cos = std::min(cos, pooled_cosine(out.at(b), ref, n));
    EXPECT_LE(e, mode.max_error) << "block " << b;
    EXPECT_GE(cos, mode.min_cosine) << "block " << b;
    EXPECT_GT(e, 0.0) << "block " << b << ": the rounding must show";
    worst_err = std::max(worst_err, e);
    worst_cos = std::min(worst_cos, cos);
    char buf[64];
    std::snprintf(buf, sizeof buf, " b%d:%.1e/%.5f", b, e, cos);
    per_block += buf;
  }
  std::printf("[parity %s] %-28s worst rel err %.2e, worst pooled cosine %.6f |%s\n", mode.name,
              c.config.c_str(), worst_err, worst_cos, per_block.c_str());
}

TEST_P(Parity, Bf16ModeStaysCloseToTheReference) {
  check_reduced(GetParam(), {"bf16", Precision::BF16, false, 6e-2, 0.999});
}

TEST_P(Parity, Int8PerImageModeStaysCloseToTheReference) {
  check_reduced(GetParam(), {"int8", Precision::INT8, false, 0.2, 0.995});
}

TEST_P(Parity, Int8CalibratedModeStaysCloseToTheReference) {
  check_reduced(GetParam(), {"int8-cal", Precision::INT8, true, 0.3, 0.99});
}
