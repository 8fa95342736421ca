// Saving and loading heads through safetensors: identical logits after a round trip for every
// head kind, spec and standardisation and metadata preserved, and corrupt files rejected.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "diffprobe/heads/head.hpp"
#include "diffprobe/io/safetensors.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

Tensor random_features(Shape shape, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(shape.numel()));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_vector(shape, v);
}

class HeadsIo : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("diffprobe_heads_io_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path path(const std::string& name) const { return dir_ / name; }

  // Trains a little (so that weights differ from their initialisation), saves, loads, compares.
  void round_trip(Head& h, const std::vector<Tensor>& x, bool standardize, const std::string& name) {
    std::vector<int> y;
    for (std::int64_t i = 0; i < x[0].dim(0); ++i) y.push_back(static_cast<int>(i % h.num_classes()));
    TrainConfig c;
    c.epochs = 2;
    c.batch_size = 8;
    c.standardize = standardize;
    h.fit(x, y, c);
    h.metadata()["features.t"] = "90";
    h.save(path(name));
    const Head g = Head::load(path(name));
    EXPECT_EQ(g.spec().to_json(), h.spec().to_json()) << name;
    EXPECT_EQ(g.num_parameters(), h.num_parameters());
    EXPECT_EQ(g.logits(x).to_vector(), h.logits(x).to_vector()) << name;  // bit for bit
    EXPECT_EQ(g.metadata().at("features.t"), "90");
    EXPECT_EQ(g.state_dict().size(), h.state_dict().size());
  }

  fs::path dir_;
};

}  // namespace

TEST_F(HeadsIo, LinearRoundTripWithStandardisation) {
  const Tensor x = random_features(Shape{16, 32}, 1);
  Head h = Head::linear(x.shape(), 4);
  round_trip(h, {x}, true, "linear.safetensors");
  EXPECT_TRUE(Head::load(path("linear.safetensors")).state_dict().contains("standardize.0.std"));
}

TEST_F(HeadsIo, MlpAndCnnRoundTrip) {
  const Tensor x = random_features(Shape{12, 4, 3, 3}, 2);
  Head m = Head::mlp(x.shape(), "16_8", 3);
  round_trip(m, {x}, false, "mlp.safetensors");
  Head c = Head::cnn(x.shape(), 3, {.channels = {5, 6}, .max_pool = 2});
  round_trip(c, {x}, true, "cnn.safetensors");
}

TEST_F(HeadsIo, AttentionAndFusionRoundTrip) {
  const Tensor x = random_features(Shape{10, 4, 5, 5}, 3), b = random_features(Shape{10, 2, 2, 2}, 4);
  Head a = Head::attention(x.shape(), 3, {.dim = 8, .depth = 2, .heads = 2, .mlp_ratio = 2, .max_pool = 4});
  round_trip(a, {x}, false, "attention.safetensors");
  Head f = Head::fusion({{x.shape(), b.shape()}, {x.shape(), b.shape()}}, 3,
                        {.dim = 8, .depth = 1, .heads = 2, .mlp_ratio = 2});
  round_trip(f, {x, b, x, b}, true, "fusion.safetensors");
}

TEST_F(HeadsIo, StoredAsHalfIsClose) {
  const Tensor x = random_features(Shape{8, 16}, 5);
  Head h = Head::linear(x.shape(), 3);
  h.save(path("half.safetensors"), DType::F16);
  const Head g = Head::load(path("half.safetensors"));
  const auto a = h.logits(x).to_vector(), b = g.logits(x).to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 5e-3);
  EXPECT_THROW(h.save(path("int.safetensors"), DType::I32), ArgumentError);
}

TEST_F(HeadsIo, StateDictNamesAreTorchStyle) {
  Head a = Head::attention(Shape{2, 4, 2, 2}, 3, {.dim = 8, .depth = 1, .heads = 2, .mlp_ratio = 2});
  const auto names = a.state_dict().names();
  for (const char* n : {"norm.weight", "proj.weight", "proj.bias", "cls_token", "blocks.0.attn.qkv.weight",
                        "blocks.0.mlp.fc2.bias", "head.weight"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  EXPECT_EQ(a.state_dict().at("cls_token").shape(), (Shape{1, 1, 8}));
  EXPECT_EQ(a.state_dict().at("proj.weight").shape(), (Shape{8, 4, 1, 1}));
}

TEST_F(HeadsIo, LoadStateDictRejectsMismatches) {
  Head h = Head::linear(Shape{2, 6}, 3);
  io::NamedTensors sd = h.state_dict();
  io::NamedTensors missing = sd;
  missing.erase("fc.bias");
  EXPECT_THROW(h.load_state_dict(missing), FormatError);
  io::NamedTensors shaped = sd;
  shaped.set("fc.weight", Tensor::zeros(Shape{3, 5}));
  EXPECT_THROW(h.load_state_dict(shaped), FormatError);
  io::NamedTensors extra = sd;
  extra.set("fc2.weight", Tensor::zeros(Shape{3, 6}));
  EXPECT_THROW(h.load_state_dict(extra), FormatError);
  io::NamedTensors half_std = sd;
  half_std.set("standardize.0.mean", Tensor::zeros(Shape{6}));
  EXPECT_THROW(h.load_state_dict(half_std), FormatError);
  io::NamedTensors zero_std = half_std;
  zero_std.set("standardize.0.std", Tensor::zeros(Shape{6}));
  EXPECT_THROW(h.load_state_dict(zero_std), FormatError);
  EXPECT_NO_THROW(h.load_state_dict(sd));
}

TEST_F(HeadsIo, RejectsFilesThatAreNotHeads) {
  io::NamedTensors plain;
  plain.set("fc.weight", Tensor::zeros(Shape{3, 6}));
  io::save_safetensors(path("plain.safetensors"), plain);
  EXPECT_THROW(Head::load(path("plain.safetensors")), FormatError);

  Head h = Head::linear(Shape{2, 6}, 3);
  io::NamedTensors sd = h.state_dict();
  sd.metadata["diffprobe.format"] = "head";
  sd.metadata["diffprobe.head"] = "{\"kind\": \"linear\", \"inputs\": [[6]]}";  // truncated spec
  io::save_safetensors(path("badspec.safetensors"), sd);
  EXPECT_THROW(Head::load(path("badspec.safetensors")), FormatError);
  sd.metadata["diffprobe.head"] =
      HeadSpec{.kind = HeadKind::Linear, .inputs = {Shape{6}}, .num_classes = 1}.to_json();
  io::save_safetensors(path("invalid.safetensors"), sd);
  EXPECT_THROW(Head::load(path("invalid.safetensors")), FormatError);  // 1 class

  h.metadata()["diffprobe.format"] = "x";
  EXPECT_THROW(h.save(path("reserved.safetensors")), ArgumentError);
  EXPECT_THROW(Head::load(path("does_not_exist.safetensors")), IoError);
}
