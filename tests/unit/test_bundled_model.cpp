// The bundled default model (models/fmnist_default.safetensors): it loads through the library
// with exactly the fmnist_default preset's keys and shapes, its metadata records where it comes
// from, its weights are finite and trained (not the initialisation), and its features separate
// Fashion-MNIST classes (the accuracy check itself is the CLI end-to-end test).
#include <gtest/gtest.h>

#include <cmath>

#include "diffprobe/diffprobe.hpp"

using namespace diffprobe;

namespace {
const std::string kModel = std::string(DIFFPROBE_SOURCE_DIR) + "/models/fmnist_default.safetensors";
}

TEST(BundledModel, LoadsWithThePresetsKeysShapesAndConfig) {
  const UNet net = UNet::load(kModel);
  const UNetConfig want = UNetConfig::preset("fmnist_default");
  EXPECT_EQ(net.config().to_json(-1), want.to_json(-1));
  EXPECT_EQ(net.num_parameters(), 2005441);
  EXPECT_EQ(net.num_blocks(), 19);
  EXPECT_EQ(net.block_output_shape(10), (Shape{1, 64, 8, 8}));  // the middle block

  const io::NamedTensors w = io::load_weights(kModel);
  const auto specs = unet_weight_specs(want);
  EXPECT_EQ(w.size(), specs.size());
  for (const auto& s : specs) {
    ASSERT_TRUE(w.contains(s.name)) << s.name;
    EXPECT_EQ(w.at(s.name).shape(), s.shape) << s.name;
    const Tensor t = w.at(s.name).to_dtype(DType::F32);
    for (std::int64_t i = 0; i < t.numel(); ++i)
      ASSERT_TRUE(std::isfinite(t.data<float>()[i])) << s.name << "[" << i << "]";
  }
  // Provenance recorded by tools/train/train_fmnist.py --export.
  ASSERT_TRUE(w.metadata.count("step"));
  EXPECT_GE(std::stoi(w.metadata.at("step")), 1000) << "the bundled model should be a trained one";
  EXPECT_EQ(w.metadata.at("dataset"), "fashion-mnist");
}

TEST(BundledModel, FeaturesAreFiniteAndDependOnTheImage) {
  const UNet net = UNet::load(kModel);
  std::vector<float> v(2 * 32 * 32, -1.0f);
  for (int y = 8; y < 24; ++y)
    for (int x = 8; x < 24; ++x)
      v[static_cast<std::size_t>(y * 32 + x)] = 0.8f;  // second image: a bright square
  for (std::size_t i = 0; i < 32 * 32; ++i) v[i] = -1.0f + 0.002f * static_cast<float>(i % 32);
  const Tensor x = Tensor::from_vector(Shape{2, 1, 32, 32}, v);
  const Tensor t = Tensor::from_vector(Shape{2}, std::vector<float>{50.0f, 50.0f});
  const int blocks[] = {5, 10, 15};
  const auto out = net.forward(x, t, Tensor(), blocks);
  for (int b : blocks) {
    const Tensor f = out.at(b).to_layout(Layout::Contiguous);
    const std::int64_t per = f.numel() / 2;
    double diff = 0, norm = 0;
    for (std::int64_t i = 0; i < per; ++i) {
      const float a = f.data<float>()[i], c = f.data<float>()[per + i];
      ASSERT_TRUE(std::isfinite(a) && std::isfinite(c));
      diff += std::abs(a - c);
      norm += std::abs(a);
    }
    EXPECT_GT(diff, 1e-2 * norm) << "block " << b << " barely depends on its input";
  }
}
