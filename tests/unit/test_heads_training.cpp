// Training heads end to end on synthetic, separable data (Gaussian blobs shaped like feature
// maps), determinism, validation and early stopping, standardisation, and input errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <thread>

#include "diffprobe/core/threads.hpp"
#include "diffprobe/heads/head.hpp"

using namespace diffprobe;

namespace {

struct Blobs {
  Tensor x;  // f32 [N, C, H, W]
  std::vector<int> y;
};

// Class c's mean is a per-channel vector, the same at every position ("what", not "where", as in
// diffusion features), plus a class-independent spatial pattern; unit Gaussian noise on top.
Blobs blobs(std::int64_t n, std::uint64_t seed, Shape sample = Shape{8, 4, 4}, int classes = 3,
            double sep = 0.6, double offset = 0.0, double scale = 1.0) {
  std::mt19937_64 means_rng(12345);
  std::normal_distribution<double> nd(0.0, 1.0);
  const std::int64_t f = sample.numel(), channels = sample[0], positions = f / channels;
  std::vector<double> mu(static_cast<std::size_t>(classes * channels)), pattern(static_cast<std::size_t>(f));
  for (auto& v : mu) v = sep * nd(means_rng);
  for (auto& v : pattern) v = nd(means_rng);
  std::mt19937_64 rng(seed);
  std::vector<float> x(static_cast<std::size_t>(n * f));
  Blobs b;
  for (std::int64_t i = 0; i < n; ++i) {
    const int c = static_cast<int>(i % classes);
    b.y.push_back(c);
    for (std::int64_t j = 0; j < f; ++j)
      x[static_cast<std::size_t>(i * f + j)] =
          static_cast<float>(offset + scale * (mu[static_cast<std::size_t>(c * channels + j / positions)] +
                                               pattern[static_cast<std::size_t>(j)] + nd(rng)));
  }
  std::vector<std::int64_t> dims{n};
  for (auto d : sample.dims()) dims.push_back(d);
  b.x = Tensor::from_vector(Shape(dims), x);
  return b;
}

TrainConfig adamw(double lr, int epochs, int batch = 32) {
  TrainConfig c;
  c.optimizer = OptimizerKind::AdamW;
  c.lr = lr;
  c.epochs = epochs;
  c.batch_size = batch;
  c.schedule = ScheduleKind::Cosine;
  c.weight_decay = 0.01;
  return c;
}

// These problems are small: one thread is fastest, and robust on a loaded machine. Tests that
// are about threads say so.
class OneThread : public ::testing::Environment {
 public:
  void SetUp() override { set_default_threads(1); }
};
[[maybe_unused]] const auto* const kOneThread = ::testing::AddGlobalTestEnvironment(new OneThread);

AttentionHeadConfig small_attention() {
  return {.dim = 32, .depth = 2, .heads = 4, .mlp_ratio = 2, .max_pool = 16};
}

}  // namespace

TEST(HeadsTraining, LinearHeadLearnsBlobs) {
  const Blobs tr = blobs(240, 1), te = blobs(150, 2);
  Head h = Head::linear(tr.x.shape(), 3);
  EXPECT_EQ(h.num_parameters(), 128 * 3 + 3);
  TrainConfig c;  // paper recipe, but with a batch and lr that fit 240 samples
  c.lr = 0.05;
  c.momentum = 0.9;
  c.batch_size = 32;
  c.epochs = 14;
  const TrainHistory hist = h.fit(tr.x, tr.y, c);
  ASSERT_EQ(hist.epochs.size(), 14u);
  EXPECT_LT(hist.epochs.back().train_loss, hist.epochs.front().train_loss);
  EXPECT_TRUE(std::isnan(hist.epochs.back().val_accuracy));
  EXPECT_EQ(hist.best_epoch, 13);
  const Report r = h.evaluate(te.x, te.y);
  EXPECT_GT(r.top1, 0.95);
  EXPECT_EQ(r.count, 150);
  EXPECT_DOUBLE_EQ(r.top5, 1.0);  // 3 classes
  std::int64_t diag = 0;
  for (int k = 0; k < 3; ++k) diag += r.confusion_at(k, k);
  EXPECT_EQ(static_cast<double>(diag) / 150.0, r.top1);
  // predict() is the argmax of logits().
  const Tensor z = h.logits(te.x);
  const auto p = h.predict(te.x);
  for (std::int64_t i = 0; i < 150; ++i) {
    const float* row = z.data<const float>() + i * 3;
    EXPECT_EQ(p[static_cast<std::size_t>(i)], std::max_element(row, row + 3) - row);
  }
}

TEST(HeadsTraining, LinearHeadTakesFlatFeaturesAndPaperRecipeRuns) {
  const Blobs tr = blobs(256, 3, Shape{64}), te = blobs(150, 4, Shape{64});
  Head h = Head::linear(64, 3);
  TrainConfig c = TrainConfig::paper_linear();
  c.batch_size = 16;  // 16 steps an epoch on this small set
  const TrainHistory hist = h.fit(tr.x, tr.y, c);
  ASSERT_EQ(hist.epochs.size(), 28u);
  EXPECT_DOUBLE_EQ(hist.epochs[7].lr, 1e-3);
  EXPECT_DOUBLE_EQ(hist.epochs[27].lr, 1e-5);
  EXPECT_GT(h.evaluate(te.x, te.y).top1, 0.9);
}

TEST(HeadsTraining, MlpHeadLearnsBlobs) {
  const Blobs tr = blobs(240, 5), te = blobs(150, 6);
  Head h = Head::mlp(tr.x.shape(), "64_32", 3);
  EXPECT_EQ(h.spec().hidden, (std::vector<int>{64, 32}));
  h.fit(tr.x, tr.y, adamw(3e-3, 12));
  EXPECT_GT(h.evaluate(te.x, te.y).top1, 0.95);
}

TEST(HeadsTraining, CnnHeadLearnsBlobs) {
  const Blobs tr = blobs(240, 7), te = blobs(150, 8);
  Head h = Head::cnn(tr.x.shape(), 3, {.channels = {16, 16}});
  h.fit(tr.x, tr.y, adamw(3e-3, 15));
  EXPECT_GT(h.evaluate(te.x, te.y).top1, 0.9);
}

TEST(HeadsTraining, AttentionHeadLearnsBlobs) {
  const Blobs tr = blobs(240, 9), te = blobs(150, 10);
  Head h = Head::attention(tr.x.shape(), 3, small_attention());
  const TrainHistory hist = h.fit(tr.x, tr.y, adamw(1e-3, 15));
  EXPECT_GT(hist.epochs.back().train_accuracy, 0.9);
  EXPECT_GT(h.evaluate(te.x, te.y).top1, 0.9);
}

TEST(HeadsTraining, AttentionHeadWithPaperRecipeLearnsBlobs) {
  const Blobs tr = blobs(256, 11), te = blobs(150, 12);
  Head h = Head::attention(tr.x.shape(), 3, small_attention());
  TrainConfig c = TrainConfig::paper_attention();
  c.batch_size = 32;  // 8 steps an epoch on this small set
  c.epochs = 14;
  h.fit(tr.x, tr.y, c);
  EXPECT_GT(h.evaluate(te.x, te.y).top1, 0.9);
}

TEST(HeadsTraining, FusionHeadLearnsBlobs) {
  // Two timesteps x two blocks; only block 1 at t=1 carries the class.
  const Blobs signal = blobs(240, 13, Shape{4, 2, 2}), test_signal = blobs(150, 14, Shape{4, 2, 2});
  auto noise = [](std::int64_t n, Shape s, std::uint64_t seed) { return blobs(n, seed, s, 3, 0.0).x; };
  const std::vector<Tensor> tr{noise(240, Shape{8, 4, 4}, 20), noise(240, Shape{4, 2, 2}, 21),
                               noise(240, Shape{8, 4, 4}, 22), signal.x};
  const std::vector<Tensor> te{noise(150, Shape{8, 4, 4}, 23), noise(150, Shape{4, 2, 2}, 24),
                               noise(150, Shape{8, 4, 4}, 25), test_signal.x};
  Head h = Head::fusion({{Shape{8, 4, 4}, Shape{4, 2, 2}}, {Shape{8, 4, 4}, Shape{4, 2, 2}}}, 3,
                        small_attention());
  EXPECT_EQ(h.spec().num_timesteps, 2);
  EXPECT_EQ(h.spec().inputs.size(), 4u);
  h.fit(tr, signal.y, adamw(1e-3, 10));
  EXPECT_GT(h.evaluate(te, test_signal.y).top1, 0.9);
  EXPECT_THROW(h.logits(std::vector<Tensor>{tr[0], tr[1]}), ArgumentError);
}

TEST(HeadsTraining, DeterministicForSeedAndThreads) {
  const Blobs tr = blobs(120, 30);
  auto train = [&](std::uint64_t seed) {
    Head h = Head::attention(tr.x.shape(), 3, {.dim = 16, .depth = 1, .heads = 2, .mlp_ratio = 2});
    TrainConfig c = adamw(1e-3, 3, 16);
    c.seed = seed;
    c.val_fraction = 0.25;
    c.threads = 2;
    auto hist = h.fit(tr.x, tr.y, c);
    return std::make_pair(hist, h.logits(tr.x).to_vector());
  };
  const auto [h1, z1] = train(5);
  const auto [h2, z2] = train(5);
  const auto [h3, z3] = train(6);
  EXPECT_EQ(z1, z2);  // bit for bit
  for (std::size_t e = 0; e < h1.epochs.size(); ++e) {
    EXPECT_EQ(h1.epochs[e].train_loss, h2.epochs[e].train_loss);
    EXPECT_EQ(h1.epochs[e].val_loss, h2.epochs[e].val_loss);
  }
  EXPECT_NE(z1, z3);  // another seed shuffles (and splits) differently
}

TEST(HeadsTraining, ConcurrentInferenceOnOneHead) {
  // Inference keeps no state in the layers, so one head can serve several threads.
  const Blobs a = blobs(40, 33, Shape{4, 2, 2}), b = blobs(40, 34, Shape{4, 2, 2});
  const Head h = Head::fusion({{Shape{4, 2, 2}}, {Shape{4, 2, 2}}}, 3,
                              {.dim = 8, .depth = 1, .heads = 2, .mlp_ratio = 2});
  const auto want1 = h.logits(std::vector<Tensor>{a.x, b.x}).to_vector();
  const auto want2 = h.logits(std::vector<Tensor>{b.x, a.x}).to_vector();
  std::vector<float> got1, got2;
  std::thread t1([&] {
    for (int i = 0; i < 20; ++i) got1 = h.logits(std::vector<Tensor>{a.x, b.x}).to_vector();
  });
  std::thread t2([&] {
    for (int i = 0; i < 20; ++i) got2 = h.logits(std::vector<Tensor>{b.x, a.x}).to_vector();
  });
  t1.join();
  t2.join();
  EXPECT_EQ(got1, want1);
  EXPECT_EQ(got2, want2);
  EXPECT_NE(want1, want2);
}

TEST(HeadsTraining, ValidationSplitIsStratified) {
  const Blobs tr = blobs(90, 31);  // 30 per class
  Head h = Head::linear(tr.x.shape(), 3);
  TrainConfig c;
  c.epochs = 2;
  c.val_fraction = 0.2;
  const TrainHistory hist = h.fit(tr.x, tr.y, c);
  EXPECT_EQ(hist.val_samples, 18);  // 6 of each class
  EXPECT_EQ(hist.train_samples, 72);
  EXPECT_FALSE(std::isnan(hist.epochs[0].val_accuracy));
}

TEST(HeadsTraining, EarlyStoppingRestoresTheBestEpoch) {
  // Random labels: the head memorises the training split while validation accuracy wanders.
  Blobs tr = blobs(150, 32, Shape{32}, 3, 0.0);
  std::mt19937 rng(3);
  for (auto& y : tr.y) y = static_cast<int>(rng() % 3);
  auto config = [](int epochs, int patience) {
    TrainConfig c;
    c.optimizer = OptimizerKind::AdamW;
    c.lr = 1e-2;
    c.schedule = ScheduleKind::Constant;
    c.batch_size = 16;
    c.epochs = epochs;
    c.val_fraction = 0.3;
    c.patience = patience;
    c.seed = 4;
    return c;
  };
  Head h = Head::mlp(tr.x.shape(), "64", 3);
  const TrainHistory hist = h.fit(tr.x, tr.y, config(60, 3));
  ASSERT_TRUE(hist.stopped_early);
  ASSERT_LT(hist.epochs.size(), 60u);
  EXPECT_EQ(static_cast<int>(hist.epochs.size()), hist.best_epoch + 4);  // patience 3 after the best
  for (const auto& e : hist.epochs)
    EXPECT_LE(e.val_accuracy, hist.epochs[static_cast<std::size_t>(hist.best_epoch)].val_accuracy);
  // The head holds the best epoch's weights: the same as training exactly that many epochs.
  Head ref = Head::mlp(tr.x.shape(), "64", 3);
  ref.fit(tr.x, tr.y, config(hist.best_epoch + 1, 0));
  EXPECT_EQ(h.logits(tr.x).to_vector(), ref.logits(tr.x).to_vector());
}

TEST(HeadsTraining, StandardisationFitsTrainingDataAndHelpsBadlyScaledFeatures) {
  // Features with a large offset and scale: plain SGD at the paper's lr diverges or stalls,
  // standardised features train fine.
  const Blobs tr = blobs(240, 40, Shape{8, 4, 4}, 3, 0.6, 500.0, 30.0),
              te = blobs(150, 41, Shape{8, 4, 4}, 3, 0.6, 500.0, 30.0);
  Head h = Head::linear(tr.x.shape(), 3);
  TrainConfig c;
  c.batch_size = 32;
  c.epochs = 10;
  c.standardize = true;
  h.fit(tr.x, tr.y, c);
  EXPECT_GT(h.evaluate(te.x, te.y).top1, 0.95);
  const auto sd = h.state_dict();
  ASSERT_TRUE(sd.contains("standardize.0.mean"));
  const auto mean = sd.at("standardize.0.mean").to_vector();
  const auto x = tr.x.to_vector();
  double m0 = 0;
  for (std::int64_t i = 0; i < 240; ++i) m0 += x[static_cast<std::size_t>(i * 128)];
  EXPECT_NEAR(mean[0], m0 / 240, 1e-2);
  EXPECT_EQ(sd.at("standardize.0.std").shape(), (Shape{8, 4, 4}));
}

TEST(HeadsTraining, DivergenceIsANumericErrorAndLeavesTheHeadUnchanged) {
  const Blobs tr = blobs(64, 42, Shape{8, 4, 4}, 3, 0.6, 0.0, 1e6);
  Head h = Head::linear(tr.x.shape(), 3);
  const auto before = h.logits(tr.x).to_vector();
  TrainConfig c;
  c.lr = 1e30;
  EXPECT_THROW(h.fit(tr.x, tr.y, c), NumericError);
  EXPECT_EQ(h.logits(tr.x).to_vector(), before);
}

TEST(HeadsTraining, AcceptsNhwcHalfAndLabelTensors) {
  const Blobs tr = blobs(30, 43);
  Head h = Head::cnn(tr.x.shape(), 3, {.channels = {4}});
  const Tensor nchw = h.logits(tr.x);
  const Tensor nhwc = h.logits(tr.x.to_layout(Layout::NHWC));
  EXPECT_EQ(nchw.to_vector(), nhwc.to_vector());
  const Tensor half = h.logits(tr.x.to_dtype(DType::F16));
  const auto a = nchw.to_vector(), b = half.to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-2);
  Tensor y64 = Tensor::empty(Shape{30}, DType::I64);
  Tensor y32 = Tensor::empty(Shape{30}, DType::I32);
  for (int i = 0; i < 30; ++i) {
    y64.data<std::int64_t>()[i] = tr.y[static_cast<std::size_t>(i)];
    y32.data<std::int32_t>()[i] = tr.y[static_cast<std::size_t>(i)];
  }
  EXPECT_EQ(h.evaluate(tr.x, y64).top1, h.evaluate(tr.x, tr.y).top1);
  EXPECT_EQ(Labels(y32).values(), tr.y);
  EXPECT_THROW(Labels(tr.x), ShapeError);
  EXPECT_THROW(Labels(Tensor::from_vector(Shape{2}, std::vector<float>{0, 1})), DTypeError);
}

TEST(HeadsTraining, InputErrorsAreTyped) {
  const Blobs tr = blobs(30, 44);
  Head lin = Head::linear(tr.x.shape(), 3);
  Head att = Head::attention(tr.x.shape(), 3, {.dim = 8, .depth = 1, .heads = 2, .mlp_ratio = 2});
  TrainConfig quick;
  quick.epochs = 1;
  const Tensor wrong = Tensor::zeros(Shape{30, 8, 4, 5});
  EXPECT_THROW(lin.fit(wrong, tr.y, quick), ShapeError);
  EXPECT_THROW(att.logits(wrong), ShapeError);
  EXPECT_THROW(att.logits(Tensor::zeros(Shape{30, 128})), ShapeError);  // attention needs maps
  EXPECT_THROW(lin.logits(Tensor::zeros(Shape{128})), ShapeError);      // no batch dimension
  EXPECT_THROW(lin.logits(Tensor::zeros(Shape{30, 128}, DType::I32)), DTypeError);
  EXPECT_THROW(lin.logits(Tensor()), ArgumentError);
  EXPECT_THROW(lin.logits(Tensor::zeros(Shape{0, 128})), ArgumentError);  // empty
  EXPECT_THROW(lin.logits(std::vector<Tensor>{tr.x, tr.x}), ArgumentError);

  std::vector<int> bad = tr.y;
  bad[7] = 3;
  EXPECT_THROW(lin.fit(tr.x, bad, quick), ArgumentError);
  bad[7] = -1;
  EXPECT_THROW(lin.evaluate(tr.x, bad), ArgumentError);
  EXPECT_THROW(lin.fit(tr.x, std::vector<int>(29, 0), quick), ShapeError);

  std::vector<float> v = tr.x.to_vector();
  v[1000] = std::numeric_limits<float>::quiet_NaN();
  const Tensor nan = Tensor::from_vector(tr.x.shape(), v);
  EXPECT_THROW(lin.fit(nan, tr.y, quick), NumericError);
  EXPECT_THROW(att.predict(nan), NumericError);
  v[1000] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(lin.logits(Tensor::from_vector(tr.x.shape(), v)), NumericError);

  TrainConfig bad_cfg;
  bad_cfg.lr = -1;
  EXPECT_THROW(lin.fit(tr.x, tr.y, bad_cfg), ConfigError);

  EXPECT_THROW(Head::linear(tr.x.shape(), 1), ConfigError);
  EXPECT_THROW(Head::mlp(tr.x.shape(), "64_x", 3), ConfigError);
  EXPECT_THROW(Head::cnn(Shape{30, 128}, 3), ShapeError);
  EXPECT_THROW(Head::attention(tr.x.shape(), 3, {.dim = 30, .heads = 8}), ConfigError);
  EXPECT_THROW(Head::fusion({{Shape{8, 4, 4}}, {Shape{8, 2, 2}}}, 3), ConfigError);
  EXPECT_THROW(Head::fusion({{Shape{8, 4, 4}, Shape{8, 4, 4}}, {Shape{8, 4, 4}}}, 3), ConfigError);
  EXPECT_THROW(Head::fusion({}, 3), ConfigError);
}

TEST(HeadsTraining, PaperAttentionHeadSizes) {
  // The default AttentionHeadConfig is the paper's: 1024 wide, 2 blocks, 8 heads, MLP ratio 4,
  // maps pooled to at most 16x16 (a 32x32 map becomes 256 tokens + CLS).
  const AttentionHeadConfig d;
  EXPECT_EQ(d.dim, 1024);
  EXPECT_EQ(d.depth, 2);
  EXPECT_EQ(d.heads, 8);
  EXPECT_EQ(d.mlp_ratio, 4);
  EXPECT_EQ(d.max_pool, 16);
  Head h = Head::attention(Shape{1, 64, 32, 32}, 10);
  const std::int64_t block =
      2 * 1024 + 3 * 1024 * 1024 + 1024 * 1024 + 1024 + 2 * 1024 + 4096 * 1024 + 4096 + 1024 * 4096 + 1024;
  const std::int64_t expected = 2 * 64 * 16 * 16 + 64 * 1024 + 1024 + 1024 + 2 * block + 1024 * 10 + 10;
  EXPECT_EQ(h.num_parameters(), expected);
  EXPECT_EQ(h.state_dict().at("norm.weight").shape(), (Shape{64, 16, 16}));
}
