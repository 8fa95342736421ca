// FeatureRows: rows read from disk on demand equal the file's tensors (f32, f16 and bf16 storage),
// bad indices and truncated files are clear errors, and heads trained and evaluated on them equal
// heads trained on the same features in memory, bit for bit (standardisation and copies included).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "diffprobe/core/error.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/features/feature_rows.hpp"
#include "diffprobe/heads/head.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

fs::path dir() {
  const fs::path d = fs::temp_directory_path() / ("diffprobe_test_rows_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

// 300 rows of [8, 2, 2] features whose mean depends on the label (so a probe learns), i64 labels.
fs::path make_file(const std::string& name, DType store, int copies = 1) {
  const std::int64_t n = 300;
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n * 32));
  std::vector<std::int64_t> y(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    y[static_cast<std::size_t>(i)] = (i % (n / copies)) % 4;
    for (int j = 0; j < 32; ++j)
      x[static_cast<std::size_t>(i * 32 + j)] =
          noise(rng) + (j % 4 == y[static_cast<std::size_t>(i)] ? 1.5f : 0.0f);
  }
  FeatureSet fs_;
  fs_.set(90, 24, Tensor::from_vector(Shape{n, 8, 2, 2}, x));
  Tensor labels = Tensor::empty(Shape{n}, DType::I64);
  std::copy(y.begin(), y.end(), labels.data<std::int64_t>());
  FeatureMetadata m;
  m.timesteps = {90};
  m.blocks = {24};
  m.copies = copies;
  const fs::path p = dir() / name;
  save_features(p, fs_, labels, m, store);
  return p;
}

}  // namespace

TEST(FeatureRows, RowsEqualTheFilesTensorsInEveryStorageType) {
  for (const DType store : {DType::F32, DType::F16, DType::BF16}) {
    const fs::path p = make_file("rows_" + std::string(dtype_name(store)) + ".safetensors", store);
    const FeatureFile f = FeatureFile::open(p);
    const FeatureRows r = FeatureRows::open({p}, "t90.b24");
    EXPECT_EQ(r.rows(), 300);
    EXPECT_EQ(r.sample_shape(), (Shape{8, 2, 2}));
    EXPECT_EQ(r.stored_dtype(), store);
    const auto all = f.feature(90, 24).to_dtype(DType::F32).to_vector();
    const std::vector<std::int64_t> idx = {299, 0, 17, 17, 150};
    std::vector<float> got(idx.size() * 32);
    r.read(idx, got.data());
    for (std::size_t k = 0; k < idx.size(); ++k)
      for (int j = 0; j < 32; ++j)
        ASSERT_EQ(got[k * 32 + static_cast<std::size_t>(j)], all[static_cast<std::size_t>(idx[k] * 32 + j)])
            << dtype_name(store);
    ASSERT_TRUE(r.labels().has_value());
    EXPECT_EQ(r.labels()->size(), 300u);
    const std::vector<std::int64_t> bad = {300};
    EXPECT_THROW(r.read(bad, got.data()), ArgumentError);
  }
  const fs::path p = make_file("missing.safetensors", DType::F32);
  EXPECT_THROW(FeatureRows::open({p}, "t90.b23"), ArgumentError);
  EXPECT_THROW(FeatureRows::open({dir() / "nope.safetensors"}, "t90.b24"), IoError);
}

TEST(FeatureRows, ATruncatedFileIsAnIoErrorNotGarbage) {
  const fs::path p = make_file("truncated.safetensors", DType::F32);
  const FeatureRows r = FeatureRows::open({p}, "t90.b24");
  fs::resize_file(p, fs::file_size(p) - 300 * 8 - 32 * 4 * 10);  // labels and the last ten rows gone
  std::vector<float> out(32);
  const std::vector<std::int64_t> last = {299};
  EXPECT_THROW(r.read(last, out.data()), IoError);
}

TEST(FeatureRows, HeadsTrainedOnRowsEqualHeadsTrainedInMemory) {
  for (int copies : {1, 3}) {
    const fs::path p = make_file("train_" + std::to_string(copies) + ".safetensors", DType::F32, copies);
    const FeatureFile f = FeatureFile::open(p);
    const FeatureRows r = FeatureRows::open({p}, "t90.b24");
    TrainConfig c = TrainConfig::paper_linear();
    c.optimizer = OptimizerKind::AdamW;
    c.schedule = ScheduleKind::Constant;
    c.epochs = 6;
    c.standardize = true;
    c.copies = copies;
    c.threads = 2;
    c.val_fraction = 0.2;
    for (const char* kind : {"linear", "cnn"}) {
      Head a = std::string(kind) == "linear" ? Head::linear(Shape{300, 8, 2, 2}, 4)
                                             : Head::cnn(Shape{300, 8, 2, 2}, 4);
      Head b = std::string(kind) == "linear" ? Head::linear(Shape{300, 8, 2, 2}, 4)
                                             : Head::cnn(Shape{300, 8, 2, 2}, 4);
      a.reset_parameters(3);
      b.reset_parameters(3);
      const TrainHistory ha = a.fit(f.feature(90, 24), *f.labels(), c);
      const TrainHistory hb = b.fit(r, *f.labels(), c);
      ASSERT_EQ(ha.epochs.size(), hb.epochs.size());
      for (std::size_t e = 0; e < ha.epochs.size(); ++e) {
        EXPECT_EQ(ha.epochs[e].train_loss, hb.epochs[e].train_loss) << kind << " epoch " << e;
        EXPECT_EQ(ha.epochs[e].val_accuracy, hb.epochs[e].val_accuracy) << kind << " epoch " << e;
      }
      EXPECT_EQ(a.logits(f.feature(90, 24)).to_vector(), b.logits(r).to_vector()) << kind;
      const Report ra = a.evaluate(f.feature(90, 24), *f.labels()), rb = b.evaluate(r, *f.labels());
      EXPECT_EQ(ra.top1, rb.top1);
      EXPECT_GT(ra.top1, 0.5) << kind << ", " << copies << " copies (chance is 0.25)";
    }
  }
  // Shapes that do not fit the head are refused before training.
  const fs::path p = make_file("shape.safetensors", DType::F32);
  const FeatureRows r = FeatureRows::open({p}, "t90.b24");
  Head cnn = Head::cnn(Shape{300, 4, 4, 2}, 4);
  EXPECT_THROW(cnn.fit(r, *FeatureFile::open(p).labels()), ShapeError);
}
