// Parity of the U-Net forward with the PyTorch reference (tests/reference/adm_unet.py) on small
// configurations that together cover every architecture variant. The reference randomises
// every weight (GroupNorm affine included), writes the weights in every checkpoint format the
// loader reads, and computes every block's output in float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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
