// FeatureExtractor, Pooler, NoiseSchedule and the counter-based noise: reproducibility (batch
// size, threads, dataset offset), the schedule against the PyTorch reference, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <type_traits>

#include "diffprobe/diffusion/counter_noise.hpp"
#include "diffprobe/diffusion/noise_schedule.hpp"
#include "diffprobe/features/feature_extractor.hpp"
#include "diffprobe/io/named_tensors.hpp"
#include "diffprobe/io/npy.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

Tensor random_images(std::int64_t n, const Shape& one, std::uint64_t seed) {
  Tensor x = Tensor::empty({n, one[1], one[2], one[3]});
  gaussian_noise({seed, 0, 0, 0}, x.data<float>(), x.numel());
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::tanh(x.data<float>()[i]);
  return x;
}

const UNet& small_model() {
  static const UNet net = UNet::random(UNetConfig::preset("fmnist_default"), 3);
  return net;
}

}  // namespace

// The extractor keeps a reference to its model, so a temporary model is refused at compile time.
static_assert(!std::is_constructible_v<FeatureExtractor, UNet&&, ExtractOptions>);
static_assert(std::is_constructible_v<FeatureExtractor, const UNet&, ExtractOptions>);

TEST(NoiseSchedule, MatchesThePyTorchReferenceBitForBit) {
  const fs::path dir = fs::path(DIFFPROBE_BINARY_DIR) / "schedule_ref";
  fs::create_directories(dir);
  const std::string script =
      "import sys, numpy as np; sys.path.insert(0, '" + std::string(DIFFPROBE_SOURCE_DIR) +
      "/tests/reference')\n"
      "from adm_unet import noise_schedule\n"
      "for kind, T in [('linear', 1000), ('cosine', 4000), ('linear', 250), ('cosine', 1000)]:\n"
      "    b, a = noise_schedule(kind, T)\n"
      "    np.save('" +
      dir.string() +
      "/%s_%d_ac.npy' % (kind, T), a)\n"
      "    np.save('" +
      dir.string() +
      "/%s_%d_c.npy' % (kind, T), np.stack([np.sqrt(a), np.sqrt(1 - a)]).astype(np.float32))\n";
  const fs::path py = dir / "make.py";
  std::ofstream(py) << script;
  ASSERT_EQ(std::system(("/usr/bin/python3 " + py.string()).c_str()), 0)
      << "the PyTorch reference is needed (scripts/setup.sh)";
  for (auto [kind, T] : std::vector<std::pair<std::string, int>>{
           {"linear", 1000}, {"cosine", 4000}, {"linear", 250}, {"cosine", 1000}}) {
    SCOPED_TRACE(kind + std::to_string(T));
    const NoiseSchedule s(kind, T);
    const Tensor c = io::load_npy(dir / (kind + "_" + std::to_string(T) + "_c.npy"));
    ASSERT_EQ(c.shape(), (Shape{2, T}));
    for (int t = 0; t < T; ++t) {
      ASSERT_EQ(s.sqrt_alpha_bar(t), c.data<float>()[t]) << t;
      ASSERT_EQ(s.sqrt_one_minus_alpha_bar(t), c.data<float>()[T + t]) << t;
    }
  }
  EXPECT_THROW(NoiseSchedule("quadratic", 10), ArgumentError);
  EXPECT_THROW(NoiseSchedule("linear", 0), ArgumentError);
  EXPECT_THROW(NoiseSchedule("linear", 1000).sqrt_alpha_bar(1000), ArgumentError);
  EXPECT_FLOAT_EQ(NoiseSchedule("cosine", 4000, true).model_timestep(2000), 500.0f);
}

TEST(CounterNoise, IsStandardNormalAndKeyed) {
  std::vector<float> a(200000), b(200000);
  gaussian_noise({1, 5, 90, 0}, a.data(), static_cast<std::int64_t>(a.size()));
  double m = 0, v = 0;
  for (float x : a) m += x;
  m /= static_cast<double>(a.size());
  for (float x : a) v += (x - m) * (x - m);
  v /= static_cast<double>(a.size());
  EXPECT_NEAR(m, 0.0, 0.01);
  EXPECT_NEAR(v, 1.0, 0.02);
  for (NoiseKey k :
       {NoiseKey{2, 5, 90, 0}, NoiseKey{1, 6, 90, 0}, NoiseKey{1, 5, 91, 0}, NoiseKey{1, 5, 90, 1}}) {
    gaussian_noise(k, b.data(), 1000);
    int same = 0;
    for (int i = 0; i < 1000; ++i) same += a[static_cast<std::size_t>(i)] == b[static_cast<std::size_t>(i)];
    EXPECT_LT(same, 5);
  }
  gaussian_noise({1, 5, 90, 0}, b.data(), 1001);  // a prefix is the same whatever the length
  for (int i = 0; i < 1001; ++i) ASSERT_EQ(a[static_cast<std::size_t>(i)], b[static_cast<std::size_t>(i)]);
  // Any piece [first, first + n), odd ends included, holds the stream's own values.
  for (const auto& [first, n] :
       std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 7}, {1, 1}, {3, 500}, {500, 501}, {999, 2}}) {
    std::vector<float> piece(static_cast<std::size_t>(n), -7.0f);
    gaussian_noise({1, 5, 90, 0}, piece.data(), first, n);
    for (std::int64_t i = 0; i < n; ++i)
      ASSERT_EQ(piece[static_cast<std::size_t>(i)], a[static_cast<std::size_t>(first + i)])
          << first << "+" << i;
  }
}

TEST(FeatureExtractor, FeaturesDoNotDependOnBatchThreadsOrOffset) {
  const UNet& net = small_model();
  const Tensor x = random_images(9, net.input_shape(1), 11);
  ExtractOptions o;
  o.timesteps = {90, 300};
  o.blocks = {5, 9, 12};
  o.noise_seed = 4;
  o.batch_size = 1;
  o.exec.threads = 1;
  const FeatureSet a = FeatureExtractor(net, o).extract(x);
  o.batch_size = 7;
  o.exec.threads = 2;
  const FeatureSet b = FeatureExtractor(net, o).extract(x);
  // Samples 4..8 extracted on their own, as a later shard of the same data set.
  const FeatureSet c = FeatureExtractor(net, o).extract(x.slice_batch(4, 9), 4);
  for (int t : o.timesteps)
    for (int blk : o.blocks) {
      const auto va = a.at(t, blk).to_vector(), vb = b.at(t, blk).to_vector(), vc = c.at(t, blk).to_vector();
      ASSERT_EQ(va.size(), vb.size());
      double worst = 0;
      for (std::size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(double(va[i]) - vb[i]));
      EXPECT_EQ(worst, 0.0) << "t" << t << " b" << blk << ": batch 1/1 thread vs batch 7/2 threads";
      const std::size_t per = va.size() / 9;
      for (std::size_t i = 0; i < vc.size(); ++i)
        ASSERT_EQ(vc[i], va[4 * per + i]) << "offset features differ";
    }
}

TEST(FeatureExtractor, PoolingNoiseModesAndDraws) {
  const UNet& net = small_model();
  const Tensor x = random_images(3, net.input_shape(1), 5);
  ExtractOptions o;
  o.timesteps = {50};
  o.blocks = {12};
  o.pool = PoolSpec::parse("avg:2");
  const FeatureExtractor fx(net, o);
  const Tensor p = fx.extract(x).at(50, 12);
  EXPECT_EQ(p.shape(), fx.feature_shape(50, 12, 3));
  // Pooling inside the extractor equals pooling afterwards.
  ExtractOptions raw = o;
  raw.pool.reset();
  const Tensor full = FeatureExtractor(net, raw).extract(x).at(50, 12);
  const Tensor pooled = Pooler(*o.pool).pool(full);
  EXPECT_EQ(pooled.to_vector(), p.to_vector());
  // Given noise = the same noise the seeded mode draws -> identical features.
  Tensor eps = Tensor::empty(x.shape());
  const std::int64_t per = x.numel() / 3;
  for (int i = 0; i < 3; ++i)
    gaussian_noise({0, static_cast<std::uint64_t>(i), 50, 0}, eps.data<float>() + i * per, per);
  ExtractOptions given = raw;
  given.noise = NoiseMode::Given;
  EXPECT_EQ(FeatureExtractor(net, given).extract(x, 0, eps).at(50, 12).to_vector(), full.to_vector());
  // No noise: the input goes to the U-Net unchanged, so the features equal a direct forward of x.
  ExtractOptions none = raw;
  none.noise = NoiseMode::None;
  const Tensor nf = FeatureExtractor(net, none).extract(x).at(50, 12);
  Tensor t = Tensor::empty({3});
  for (int i = 0; i < 3; ++i) t.data<float>()[i] = 50.0f;
  const std::vector<int> blk = {12};
  EXPECT_EQ(net.forward(x, t, {}, blk).at(12).to_layout(Layout::Contiguous).to_vector(), nf.to_vector());
  // Averaging over draws differs from one draw and is deterministic.
  ExtractOptions avg = o;
  avg.noise_draws = 3;
  const auto d1 = FeatureExtractor(net, avg).extract(x).at(50, 12).to_vector();
  const auto d2 = FeatureExtractor(net, avg).extract(x).at(50, 12).to_vector();
  EXPECT_EQ(d1, d2);
  EXPECT_NE(d1, p.to_vector());
}

TEST(FeatureExtractor, BadInputGetsTypedErrors) {
  const UNet& net = small_model();
  auto make = [&](auto edit) {
    ExtractOptions o;
    o.timesteps = {10};
    o.blocks = {3};
    edit(o);
    return FeatureExtractor(net, o);
  };
  EXPECT_THROW(make([&](ExtractOptions& o) { o.blocks = {net.num_blocks() + 1}; }), ArgumentError);
  EXPECT_THROW(make([](ExtractOptions& o) { o.blocks = {-1}; }), ArgumentError);
  EXPECT_THROW(make([](ExtractOptions& o) { o.timesteps = {1000}; }), ArgumentError);
  EXPECT_THROW(make([](ExtractOptions& o) { o.timesteps = {}; }), ArgumentError);
  EXPECT_THROW(make([](ExtractOptions& o) { o.label = 3; }), ArgumentError);  // unconditional model
  EXPECT_THROW(make([](ExtractOptions& o) { o.pool = PoolSpec{PoolKind::Average, 64}; }), ArgumentError);
  EXPECT_THROW(make([](ExtractOptions& o) { o.noise_draws = 0; }), ArgumentError);
  const FeatureExtractor fx = make([](ExtractOptions&) {});
  EXPECT_THROW(fx.extract(Tensor::zeros({2, 3, 32, 32})), ShapeError);
  EXPECT_THROW(fx.extract(Tensor::zeros({2, 1, 32, 32}, DType::I32)), DTypeError);
  Tensor nan = Tensor::zeros({3, 1, 32, 32});
  nan.data<float>()[2 * 32 * 32 + 7] = NAN;
  try {
    fx.extract(nan, 40);
    ADD_FAILURE() << "a NaN pixel was accepted";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("image 42 holds NaN"), std::string::npos) << e.what();
  }
  nan.data<float>()[2 * 32 * 32 + 7] = -INFINITY;
  EXPECT_THROW(fx.extract(nan), NumericError);
  EXPECT_THROW(PoolSpec::parse("avg:"), ArgumentError);
  EXPECT_THROW(PoolSpec::parse("median:2"), ArgumentError);
  EXPECT_EQ(PoolSpec::parse("max:4").str(), "max:4");
}

TEST(FeatureExtractor, NonFiniteWeightsAndFeaturesAreNamed) {
  const UNetConfig config = UNetConfig::preset("fmnist_default");
  io::NamedTensors w;
  for (const auto& spec : unet_weight_specs(config)) {
    // Weights of magnitude 1e12: finite, but the activations overflow float within a few layers.
    std::vector<float> v(static_cast<std::size_t>(spec.shape.numel()), 1e12f);
    w.set(spec.name, Tensor::from_vector(spec.shape, v));
  }
  const UNet huge = UNet::from_weights(config, w);
  ExtractOptions o;
  o.timesteps = {10};
  o.blocks = {9};
  const Tensor x = random_images(2, huge.input_shape(1), 3);
  // Without the check the non-finite features are returned as they are ...
  const auto f = FeatureExtractor(huge, o).extract(x).at(10, 9).to_vector();
  EXPECT_FALSE(std::all_of(f.begin(), f.end(), [](float v) { return std::isfinite(v); }));
  // ... with it, the first bad sample is named.
  o.check_finite = true;
  try {
    FeatureExtractor(huge, o).extract(x, 7);
    ADD_FAILURE() << "non-finite features passed check_finite";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("image 7 at t=10, block 9"), std::string::npos) << e.what();
  }

  // A NaN weight is refused when the model is built, by name.
  std::vector<float> bad(static_cast<std::size_t>(w.at("out.0.bias").numel()), 0.0f);
  bad[1] = NAN;
  w.set("out.0.bias", Tensor::from_vector(w.at("out.0.bias").shape(), bad));
  try {
    UNet::from_weights(config, w);
    ADD_FAILURE() << "a NaN weight was accepted";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("'out.0.bias' holds NaN at index 1"), std::string::npos) << e.what();
  }
}

TEST(FeatureExtractor, ThreadsSharingAModelOrAnExtractorGetTheSameBytes) {
  // One UNet shared by two extractors, and one extractor shared by two threads: every call's
  // features equal a single thread's.
  const UNet& net = small_model();
  ExtractOptions a, b;
  a.timesteps = {10, 300};
  a.blocks = {4, 9};
  a.exec.threads = 1;
  b.timesteps = {50};
  b.blocks = {12};
  b.pool = PoolSpec::parse("avg:2");
  b.batch_size = 3;
  b.exec.threads = 1;
  const FeatureExtractor fa(net, a), fb(net, b);
  const Tensor x = random_images(5, net.input_shape(1), 21);
  const auto want_a = fa.extract(x, 3).at(300, 9).to_vector();
  const auto want_b = fb.extract(x, 3).at(50, 12).to_vector();
  std::vector<float> got[4];
  auto run = [&](int id) {
    for (int i = 0; i < 3; ++i) {
      if (id == 0) got[0] = fa.extract(x, 3).at(300, 9).to_vector();
      if (id == 1) got[1] = fb.extract(x, 3).at(50, 12).to_vector();
      if (id >= 2) got[id] = fa.extract(x, 3).at(300, 9).to_vector();  // the same extractor as thread 0
    }
  };
  std::thread t0(run, 0), t1(run, 1), t2(run, 2), t3(run, 3);
  t0.join();
  t1.join();
  t2.join();
  t3.join();
  EXPECT_EQ(got[0], want_a);
  EXPECT_EQ(got[1], want_b);
  EXPECT_EQ(got[2], want_a);
  EXPECT_EQ(got[3], want_a);
}
