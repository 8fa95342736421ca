// `diffprobe extract --preprocess adm` on a class folder of real photographs gives the same
// features, bit for bit, as the same photos prepared by guided-diffusion's center_crop_arr and fed
// as .npy (S = 64 and 256, random models with every weight random); `--preprocess torchvision`
// gives other ones; the feature files name the mode. `--augment adm --copies K`: K augmented views
// per image, copy-major, resumable and reproducible, and `probe` trains on them one copy per epoch.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>

#include "cli/run_cli.hpp"
#include "diffprobe/diffprobe.hpp"

namespace fs = std::filesystem;
using namespace diffprobe;
using cli_test::Result;
using cli_test::run;

namespace {

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

fs::path work() {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "cli_test_preprocess";
  fs::create_directories(d);
  return d;
}

// A small ADM U-Net of the given size with every weight random, its config in the metadata.
fs::path random_model(int size) {
  UNetConfig c;
  c.image_size = size;
  c.num_channels = 32;
  c.num_res_blocks = 1;
  c.channel_mult = size == 64 ? "1,2,2,2" : "1,1,2,2,4,4";
  c.attention_resolutions = "8";
  c.num_head_channels = 32;
  io::NamedTensors w;
  std::mt19937 rng(static_cast<unsigned>(size));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& spec : unet_weight_specs(c)) {
    std::vector<float> v(static_cast<std::size_t>(spec.shape.numel()));
    const float scale = spec.shape.rank() > 1
                            ? 1.0f / std::sqrt(static_cast<float>(spec.shape.numel() / spec.shape.dim(0)))
                            : 0.1f;
    for (auto& x : v) x = normal(rng) * scale;
    w.set(spec.name, Tensor::from_vector(spec.shape, v));
  }
  w.metadata["config"] = c.to_json();
  const fs::path f = work() / ("random_" + std::to_string(size) + ".safetensors");
  io::save_safetensors(f, w);
  return f;
}

class CliPreprocess : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = work() / ("photos_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    rc_ = std::system(("/usr/bin/python3 " +
                       (fs::path(DIFFPROBE_SOURCE_DIR) / "tests/unit/make_photos.py").string() + " " +
                       dir_.string())
                          .c_str());
  }
  void SetUp() override { ASSERT_EQ(rc_, 0) << "tests/unit/make_photos.py failed (bash scripts/setup.sh)"; }
  static inline fs::path dir_;
  static inline int rc_ = -1;
};

fs::path extract(const std::string& name, const std::string& args) {
  const fs::path out = work() / (name + ".safetensors");
  fs::remove(out);
  fs::remove_all(out.string() + ".partial");
  const Result r = run("extract " + args + " --t 90 --noise-seed 3 --batch 4 --threads 2 --out " + q(out));
  EXPECT_EQ(r.code, 0) << r.out;
  return out;
}

}  // namespace

TEST_F(CliPreprocess, FolderThroughAdmEqualsCenterCropArrNpyAtBlockOne) {
  for (const auto& [size, pool] : {std::pair{64, "none"}, std::pair{256, "avg:8"}}) {
    const fs::path model = random_model(size);
    const std::string common = "--weights " + q(model) + " --blocks 1 --pool " + pool;
    const std::string s = std::to_string(size);
    const fs::path from_folder = extract("folder_" + s, common + " --input " + q(dir_ / "folder"));
    const fs::path from_npy = extract("npy_" + s, common + " --input " + q(dir_ / ("adm_" + s + "_rgb.npy")) +
                                                      " --labels " + q(dir_ / "labels.npy"));
    const fs::path tv =
        extract("tv_" + s, common + " --preprocess torchvision --input " + q(dir_ / "folder"));
    const FeatureFile a = FeatureFile::open(from_folder), b = FeatureFile::open(from_npy),
                      c = FeatureFile::open(tv);
    ASSERT_EQ(a.size(), 18);
    const auto fa = a.feature(90, 1).to_vector(), fb = b.feature(90, 1).to_vector(),
               fc = c.feature(90, 1).to_vector();
    ASSERT_EQ(fa.size(), fb.size());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < fa.size(); ++i) differ += fa[i] != fb[i];
    EXPECT_EQ(differ, 0u) << "S = " << size << ": the folder's features differ from center_crop_arr's";
    EXPECT_NE(fa, fc) << "torchvision preprocessing gave the adm features";
    EXPECT_EQ(a.labels()->to_vector(), b.labels()->to_vector());
    EXPECT_EQ(a.metadata().preprocess, "adm");
    EXPECT_NE(a.metadata().preprocessing.find("center_crop_arr"), std::string::npos)
        << a.metadata().preprocessing;
    EXPECT_EQ(b.metadata().preprocess, "");  // .npy: stored model inputs
    EXPECT_EQ(c.metadata().preprocess, "torchvision");
  }
}

TEST_F(CliPreprocess, AugmentedCopiesAreCopyMajorReproducibleAndResumable) {
  const fs::path model = random_model(64);
  const std::string args = "--weights " + q(model) + " --blocks 1,2 --pool avg:4 --input " +
                           q(dir_ / "folder") + " --augment adm --copies 3 --augment-seed 5 --chunk 7";
  const fs::path a = extract("aug_a", args);
  const FeatureFile fa = FeatureFile::open(a);
  ASSERT_EQ(fa.size(), 54);
  EXPECT_EQ(fa.metadata().copies, 3);
  EXPECT_NE(fa.metadata().preprocessing.find("random_crop_arr"), std::string::npos)
      << fa.metadata().preprocessing;
  const auto labels = fa.labels()->to_vector();
  for (int r = 18; r < 54; ++r)
    ASSERT_EQ(labels[static_cast<std::size_t>(r)], labels[static_cast<std::size_t>(r % 18)]);
  // The copies differ from each other and from the unaugmented features.
  const Tensor& x = fa.feature(90, 1);
  const auto row = [&](std::int64_t r) { return x.slice_batch(r, r + 1).to_vector(); };
  EXPECT_NE(row(0), row(18));
  EXPECT_NE(row(18), row(36));
  // The same command again, and one killed and resumed, give the same bytes.
  const fs::path b = work() / "aug_b.safetensors";
  fs::remove(b);
  fs::remove_all(b.string() + ".partial");
  const std::string cli = std::string(DIFFPROBE_CLI) + " extract " + args +
                          " --t 90 --noise-seed 3 --batch 4 --threads 2 --out " + q(b);
  (void)std::system(("timeout -s KILL 2 " + cli + " > /dev/null 2>&1").c_str());
  ASSERT_EQ(std::system((cli + " > /dev/null 2>&1").c_str()), 0);
  std::ifstream sa(a, std::ios::binary), sb(b, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(sa), {}),
            std::string(std::istreambuf_iterator<char>(sb), {}));
  // Refusals: copies without augmentation, augmentation of stored arrays.
  for (const auto& [bad, expect] :
       {std::pair{"--input " + q(dir_ / "folder") + " --copies 2", "--augment"},
        std::pair{"--input " + q(dir_ / "adm_64_rgb.npy") + " --augment adm", ".npy"}}) {
    const Result r = run("extract --weights " + q(model) + " --t 90 --blocks 1 " + bad + " --out " +
                         q(work() / "refused.safetensors"));
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(expect), std::string::npos) << r.out;
  }
}

TEST_F(CliPreprocess, ProbeTrainsOneCopyPerEpochAndRefusesAugmentedTestFiles) {
  const fs::path model = random_model(64);
  const std::string base = "--weights " + q(model) + " --blocks 2 --pool avg:8 --input " + q(dir_ / "folder");
  const fs::path train = extract("probe_train", base + " --augment adm --copies 2");
  const fs::path test = extract("probe_test", base);
  Result r = run("probe --train " + q(train) + " --test " + q(test) +
                 " --feature t90.b2 --epochs 4 --optimizer adamw --lr 1e-3 --standardize --threads 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("on 18 samples x 2 augmented copies"), std::string::npos) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(train 18  test 18  top-1)"))) << r.out;
  r = run("probe --train " + q(train) + " --test " + q(train) + " --feature t90.b2 --epochs 1");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("augmented copies"), std::string::npos) << r.out;
}
