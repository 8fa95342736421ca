// UNetConfig: presets reproduce every published checkpoint's keys and shapes (the .tsv files in
// ../shared/reference/state_dicts), JSON round trips, validation and inference from shapes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "diffprobe/model/unet.hpp"
#include "diffprobe/model/unet_config.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

struct TsvFile {
  std::string flags_json;
  std::int64_t parameters = 0;
  int input_blocks = 0;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> keys;
};

TsvFile read_tsv(const fs::path& p) {
  std::ifstream f(p);
  EXPECT_TRUE(f.good()) << p;
  TsvFile t;
  std::string line;
  std::getline(f, line);
  const auto a = line.find("flags: {");
  const auto b = line.find('}', a);
  t.flags_json = line.substr(a + 7, b - a - 6);
  std::getline(f, line);
  std::sscanf(line.c_str(), "# tensors: %*d; parameters: %lld; input_blocks: %d",
              reinterpret_cast<long long*>(&t.parameters), &t.input_blocks);
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    const auto tab = line.find('\t');
    std::vector<std::int64_t> shape;
    std::stringstream ss(line.substr(tab + 1));
    std::string d;
    while (std::getline(ss, d, ',')) shape.push_back(std::stoll(d));
    t.keys.emplace_back(line.substr(0, tab), shape);
  }
  return t;
}

fs::path state_dict_dir() { return fs::path(DIFFPROBE_SHARED_DIR) / "reference" / "state_dicts"; }

}  // namespace

TEST(UNetConfig, EveryPresetMatchesThePublishedStateDict) {
  int files = 0;
  for (const auto& entry : fs::directory_iterator(state_dict_dir())) {
    if (entry.path().extension() != ".tsv") continue;
    ++files;
    const std::string stem = entry.path().stem().string();
    SCOPED_TRACE(stem);
    const TsvFile tsv = read_tsv(entry.path());
    const UNetConfig c = UNetConfig::preset(stem);
    const auto specs = unet_weight_specs(c);
    ASSERT_EQ(specs.size(), tsv.keys.size());
    for (std::size_t i = 0; i < specs.size(); ++i) {
      ASSERT_EQ(specs[i].name, tsv.keys[i].first) << "key " << i;
      ASSERT_EQ(specs[i].shape, Shape(tsv.keys[i].second)) << specs[i].name;
    }
    EXPECT_EQ(unet_num_parameters(c), tsv.parameters);
    EXPECT_EQ(c.num_input_blocks(), tsv.input_blocks);
    // The flags of the file parse with our reader and describe the same architecture.
    UNetConfig from_flags = UNetConfig::from_json(tsv.flags_json);
    from_flags.diffusion_steps = c.diffusion_steps;
    EXPECT_EQ(unet_weight_specs(from_flags).size(), specs.size());
  }
  EXPECT_EQ(files, 10);
}

TEST(UNetConfig, PaperModelBlockInfo) {
  const UNetConfig c = UNetConfig::preset("256x256_diffusion_uncond");
  EXPECT_EQ(unet_num_parameters(c), 552814086);
  EXPECT_EQ(c.num_input_blocks(), 18);
  const auto infos = unet_block_infos(c);
  ASSERT_EQ(infos.size(), 38u);  // 37 blocks + out
  EXPECT_EQ(infos[23].block, 24);
  EXPECT_EQ(infos[23].name, "output_blocks.4");
  EXPECT_EQ(infos[23].output_shape, (Shape{1, 1024, 16, 16}));
  EXPECT_EQ(infos[18].output_shape, (Shape{1, 1024, 8, 8}));   // block 19: the middle
  EXPECT_EQ(infos[29].output_shape, (Shape{1, 512, 64, 64}));  // block 30
  EXPECT_EQ(infos.back().output_shape, (Shape{1, 6, 256, 256}));
  double total = 0, to24 = 0;
  std::int64_t params = 0;
  for (const auto& i : infos) {
    total += i.gflop;
    params += i.parameters;
    if (i.block >= 1 && i.block <= 24) to24 += i.gflop;
  }
  // BENCHMARK.md: ~640 GFLOP to block 24 and ~2240 for the whole U-Net (2*MAC, batch 1).
  EXPECT_NEAR(to24, 640, 40);
  EXPECT_NEAR(total, 2240, 120);
  EXPECT_EQ(params + (1024 * 256 + 1024) + (1024 * 1024 + 1024), 552814086);  // blocks + out + time_embed
}

TEST(UNetConfig, JsonRoundTripAndErrors) {
  for (const auto& name : UNetConfig::preset_names()) {
    const UNetConfig c = UNetConfig::preset(name);
    EXPECT_EQ(UNetConfig::from_json(c.to_json()), c) << name;
  }
  EXPECT_THROW(UNetConfig::from_json("{\"image_size\": 64, \"bogus\": 1}"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json("{\"image_size\": \"big\"}"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json("not json"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json("{\"image_size\": 48}"), ConfigError);  // no default channel_mult
  EXPECT_THROW(UNetConfig::from_json("{\"image_size\": 32, \"num_channels\": 48}"), ConfigError);  // 48 % 32
  EXPECT_THROW(UNetConfig::from_json("{\"noise_schedule\": \"quadratic\"}"), ConfigError);
  EXPECT_THROW(UNetConfig::preset("nope"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json("{\"image_size\": 32, \"channel_mult\": \"1,x\"}"), ConfigError);
  // A list form of channel_mult is accepted.
  EXPECT_EQ(UNetConfig::from_json("{\"image_size\": 32, \"channel_mult\": [1, 2, 2]}").channel_mult, "1,2,2");
  EXPECT_EQ(UNetConfig::preset_for_filename("/x/256x256_diffusion_uncond.pt").value(),
            "256x256_diffusion_uncond");
}

TEST(UNetConfig, InferenceFromShapesRecoversEveryPreset) {
  for (const auto& name : UNetConfig::preset_names()) {
    SCOPED_TRACE(name);
    const UNetConfig c = UNetConfig::preset(name);
    io::NamedTensors w;
    // Shapes are all inference reads: uninitialised tensors are never touched.
    for (const auto& s : unet_weight_specs(c)) w.set(s.name, Tensor::empty(s.shape));
    UNetConfig base;
    base.image_size = c.image_size;
    base.num_heads = c.num_heads;
    base.num_head_channels = c.num_head_channels;
    base.use_new_attention_order = c.use_new_attention_order;
    const ConfigInference inf = infer_config(w, base);
    EXPECT_EQ(unet_weight_specs(inf.config).size(), unet_weight_specs(c).size());
    EXPECT_EQ(inf.config.channel_multipliers(), c.channel_multipliers());
    EXPECT_EQ(inf.config.attention_downsample_factors(), c.attention_downsample_factors());
    EXPECT_EQ(inf.config.num_res_blocks, c.num_res_blocks);
    EXPECT_EQ(inf.config.resblock_updown, c.resblock_updown);
    EXPECT_EQ(inf.config.use_scale_shift_norm, c.use_scale_shift_norm);
    EXPECT_EQ(inf.config.class_cond, c.class_cond);
    EXPECT_EQ(inf.config.learn_sigma, c.learn_sigma);
    EXPECT_EQ(inf.config.in_channels, c.in_channels);
    EXPECT_FALSE(inf.assumed.empty());
  }
}

TEST(UNetConfig, StrictValidationListsEveryProblem) {
  const UNetConfig c = UNetConfig::preset("fmnist_default");
  io::NamedTensors w;
  for (const auto& s : unet_weight_specs(c)) w.set(s.name, Tensor::zeros(s.shape));
  w.erase("out.2.bias");
  w.set("input_blocks.1.0.in_layers.2.weight", Tensor::zeros({32, 32, 1, 1}));
  w.set("extra.weight", Tensor::zeros({3}));
  try {
    UNet::from_weights(c, w);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out.2.bias"), std::string::npos) << m;
    EXPECT_NE(m.find("extra.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("input_blocks.1.0.in_layers.2.weight"), std::string::npos) << m;
  }
}
