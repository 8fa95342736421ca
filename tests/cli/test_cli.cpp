// The `diffprobe` command end to end: info, extract and probe on the bundled model and a few
// hundred Fashion-MNIST images, resume of an interrupted extraction, and bad input ending with
// one clear error message and a non-zero exit.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "cli/run_cli.hpp"

using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

using cli_test::Result;
using cli_test::run;

const std::string kData = "/usr/share/datasets/fashion-mnist/";
const std::string kModel = std::string(DIFFPROBE_SOURCE_DIR) + "/models/fmnist_default.safetensors";

fs::path work() {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "cli_test";
  fs::create_directories(d);
  return d;
}

std::string extract_args(const std::string& split, int limit, const fs::path& out) {
  return "extract --weights " + kModel + " --input " + kData + split + "-images-idx3-ubyte.gz --labels " +
         kData + split +
         "-labels-idx1-ubyte.gz --t 50 --blocks 12,14 --pool avg:2 --batch 32 --threads 2 --limit " +
         std::to_string(limit) + " --out " + out.string();
}

}  // namespace

TEST(Cli, InfoOfThePaperModel) {
  const Result r = run("info --preset 256x256_diffusion_uncond");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("parameters: 552814086"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("input blocks: 18"), std::string::npos) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\n\s+24\s+output_blocks\.4\s+1024x16x16)"))) << r.out;
}

TEST(Cli, ExtractAndProbeFashionMnistWellAboveChance) {
  const fs::path train = work() / "train.safetensors", test = work() / "test.safetensors";
  fs::remove(train);
  fs::remove(test);
  Result r = run(extract_args("train", 600, train));
  ASSERT_EQ(r.code, 0) << r.out;
  r = run(extract_args("t10k", 300, test));
  ASSERT_EQ(r.code, 0) << r.out;
  r = run(
      "probe --train " + train.string() + " --test " + test.string() +
      " --feature t50.b12 --head linear --optimizer adamw --lr 1e-3 --epochs 30 --standardize --threads 2");
  ASSERT_EQ(r.code, 0) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(top-1 ([0-9.]+)%)"))) << r.out;
  const double top1 = std::stod(m[1]);
  std::printf("[cli] linear probe on 600 train / 300 test Fashion-MNIST images: top-1 %.2f%%\n", top1);
  EXPECT_GT(top1, 50.0) << "chance is 10%";
}

TEST(Cli, InterruptedExtractionResumesToTheSameFile) {
  const fs::path a = work() / "whole.safetensors", b = work() / "resumed.safetensors";
  fs::remove(a);
  fs::remove(b);
  fs::remove_all(b.string() + ".partial");
  ASSERT_EQ(run(extract_args("t10k", 96, a) + " --chunk 32").code, 0);
  // A first run limited to 64 samples leaves finished chunks behind only if it is killed; simulate
  // that by running the same job under `timeout` until chunks exist, then resume.
  const std::string cmd = "timeout -s KILL 3 " + std::string(DIFFPROBE_CLI) + " " +
                          extract_args("t10k", 96, b) + " --chunk 32 > /dev/null 2>&1";
  (void)std::system(cmd.c_str());
  const Result r = run(extract_args("t10k", 96, b) + " --chunk 32");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  const std::string sa((std::istreambuf_iterator<char>(fa)), {}),
      sb((std::istreambuf_iterator<char>(fb)), {});
  EXPECT_FALSE(sa.empty());
  EXPECT_EQ(sa, sb) << "a resumed extraction must equal an uninterrupted one";
}

TEST(Cli, BadInputEndsWithOneClearErrorAndNonZeroExit) {
  const fs::path out = work() / "bad.safetensors";
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"extract --weights /nonexistent.safetensors --input " + kData +
           "t10k-images-idx3-ubyte.gz --t 50 --blocks 12 --out " + out.string(),
       "nonexistent"},
      {extract_args("t10k", 10, out) + " --blocks 99", "block 99"},
      {extract_args("t10k", 10, out) + " --t 1000", "timestep 1000"},
      {extract_args("t10k", 10, out) + " --label 3", "not class-conditional"},
      {extract_args("t10k", 10, out) + " --pool avg:64", "pool size"},
      {"extract --weights " + kModel + " --input /nonexistent_dir --t 50 --blocks 12 --out " + out.string(),
       "nonexistent_dir"},
      {"info --weights " + std::string(DIFFPROBE_SOURCE_DIR) + "/README.md", "README.md"},
      {"info --preset no_such_model", "no_such_model"},
  };
  for (const auto& c : cases) {
    const Result r = run(c.args);
    EXPECT_NE(r.code, 0) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(r.out.find("internal error"), std::string::npos) << r.out;
  }
  // A feature that is not in the file.
  const fs::path f = work() / "small.safetensors";
  fs::remove(f);
  ASSERT_EQ(run(extract_args("t10k", 20, f)).code, 0);
  const Result r =
      run("probe --train " + f.string() + " --test " + f.string() + " --feature t90.b3 --epochs 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("t50.b12"), std::string::npos) << "the error lists what the file has:\n" << r.out;
}
