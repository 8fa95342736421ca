// run_sweep: every cell's features are what FeatureExtractor computes from one pass per t, each
// cell is scored by the requested probe, the table, JSON and heatmaps are written, an interrupted
// sweep resumes to the same results computing only what is missing, refinement re-scores the best
// cells, other settings in the same folder are refused; Spearman's rank correlation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/open_dataset.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/io/npy.hpp"
#include "diffprobe/studies/sweep.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

const fs::path kImages = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
const fs::path kLabels = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";

const UNet& model() {
  static const UNet net = UNet::random(UNetConfig::preset("fmnist_default"), 7);
  return net;
}

std::unique_ptr<data::Dataset> images(std::int64_t limit) {
  return data::open_dataset(kImages, kLabels, data::InputSpec{1, 32}, limit);
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("diffprobe_test_sweep_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  return d;
}

SweepOptions small_options() {
  SweepOptions o;
  o.timesteps = {20, 300};
  o.blocks = {3, 9};
  o.pools = {PoolSpec::parse("avg:2")};
  o.limit_train = 60;
  o.limit_test = 30;
  o.batch_size = 16;
  o.threads = 2;
  o.noise_seed = 4;
  o.refine = 0;  // the refinement has its own test
  return o;
}

std::string text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST(Sweep, CellsHoldTheExtractorsFeaturesAndTheirProbesScores) {
  ASSERT_TRUE(fs::exists(kImages)) << "bash scripts/setup.sh installs dataset-fashion-mnist";
  auto train = images(60), test = images(30);
  const fs::path dir = fresh_dir("plain");
  const SweepOptions o = small_options();
  const SweepResult r = run_sweep(model(), *train, *test, dir, o);
  ASSERT_EQ(r.cells.size(), 4u);
  EXPECT_EQ(r.train_samples, 60);
  EXPECT_EQ(r.test_samples, 30);
  EXPECT_EQ(r.num_classes, 10);
  const std::vector<std::pair<int, int>> order = {{20, 3}, {20, 9}, {300, 3}, {300, 9}};
  for (std::size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(r.cells[i].t, order[i].first);
    EXPECT_EQ(r.cells[i].block, order[i].second);
    EXPECT_EQ(r.cells[i].pool, "avg:2");
    EXPECT_FALSE(r.cells[i].resumed);
    EXPECT_GE(r.cells[i].top1, 0.0);
    EXPECT_LE(r.cells[i].top1, r.cells[i].top5);
  }

  // The features of a t come from one job serving both blocks, equal to the extractor's own
  // output for that t (test split: noise seed + 1).
  ExtractOptions eo;
  eo.timesteps = {300};
  eo.blocks = {3, 9};
  eo.pool = PoolSpec::parse("avg:2");
  eo.noise_seed = 5;
  const FeatureExtractor fx(model(), eo);
  const FeatureSet direct = fx.extract(test->images(0, 30), 0);
  const FeatureFile f = FeatureFile::open(dir / "features" / "test_t300_avg2.safetensors");
  EXPECT_EQ(f.metadata().blocks, (std::vector<int>{3, 9}));
  for (int b : {3, 9})
    EXPECT_EQ(f.feature(300, b).to_vector(), direct.at(300, b).to_vector()) << "block " << b;

  // Each cell's score is the ridge probe's on those features.
  const FeatureFile ftr = FeatureFile::open(dir / "features" / "train_t300_avg2.safetensors");
  const RidgeFit fit = fit_ridge_probe(ftr.feature(300, 9), *ftr.labels(), 10, o.ridge);
  const Report rep = fit.head.evaluate(f.feature(300, 9), *f.labels());
  EXPECT_EQ(r.cells[3].top1, rep.top1);
  EXPECT_EQ(r.cells[3].top5, rep.top5);
  EXPECT_EQ(r.cells[3].alpha, fit.alpha);
  EXPECT_EQ(r.cells[3].features, 256);  // block 9: 64 channels x 2 x 2

  // The best cell is the first maximum of top-1.
  double best = -1;
  for (const auto& c : r.cells) best = std::max(best, c.top1);
  EXPECT_EQ(r.best.top1, best);

  // The outputs.
  EXPECT_TRUE(fs::exists(r.csv));
  EXPECT_TRUE(fs::exists(r.json));
  ASSERT_EQ(r.heatmaps.size(), 1u);
  EXPECT_EQ(text(r.heatmaps[0]).substr(1, 3), "PNG");
  const std::string csv = text(r.csv);
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "t,block,pool,features,top1,top5,alpha,refined_top1,refined_top5,probe_seconds");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
}

TEST(Sweep, AnInterruptedSweepResumesComputingOnlyWhatIsMissing) {
  auto train = images(60), test = images(30);
  const fs::path whole = fresh_dir("whole"), cut = fresh_dir("cut");
  SweepOptions o = small_options();
  const SweepResult reference = run_sweep(model(), *train, *test, whole, o);

  // Cancel at the second cell.
  std::atomic<bool> cancel{false};
  o.cancel = &cancel;
  o.on_progress = [&](const SweepProgress& p) {
    if (p.phase == "probe" && p.done == 1) cancel = true;
  };
  EXPECT_THROW(run_sweep(model(), *train, *test, cut, o), CancelledError);
  EXPECT_TRUE(fs::exists(cut / "cells" / "t20_b3_avg2.json"));
  EXPECT_FALSE(fs::exists(cut / "cells" / "t20_b9_avg2.json"));

  cancel = false;
  std::int64_t extract_resumed = -1, cells_resumed = -1;
  o.on_progress = [&](const SweepProgress& p) {
    if (p.phase == "extract") extract_resumed = p.resumed;
    if (p.phase == "probe") cells_resumed = p.resumed;
  };
  const SweepResult resumed = run_sweep(model(), *train, *test, cut, o);
  EXPECT_EQ(extract_resumed, 2 * (60 + 30));  // every feature file was finished
  EXPECT_EQ(cells_resumed, 1);
  ASSERT_EQ(resumed.cells.size(), reference.cells.size());
  EXPECT_TRUE(resumed.cells[0].resumed);
  for (std::size_t i = 0; i < resumed.cells.size(); ++i) {
    EXPECT_EQ(resumed.cells[i].top1, reference.cells[i].top1) << i;
    EXPECT_EQ(resumed.cells[i].top5, reference.cells[i].top5) << i;
  }
  // The feature files are byte-identical to the uninterrupted run's.
  for (const char* name : {"train_t20_avg2", "test_t300_avg2"})
    EXPECT_EQ(text(cut / "features" / (std::string(name) + ".safetensors")),
              text(whole / "features" / (std::string(name) + ".safetensors")));

  // A third run computes nothing.
  const SweepResult again = run_sweep(model(), *train, *test, cut, o);
  for (const auto& c : again.cells) EXPECT_TRUE(c.resumed);
  EXPECT_EQ(cells_resumed, 4);

  // Another probe re-scores every cell (the cells record which probe made them).
  o.probe = SweepProbe::Trained;
  o.trained.epochs = 2;
  const SweepResult trained = run_sweep(model(), *train, *test, cut, o);
  for (const auto& c : trained.cells) EXPECT_FALSE(c.resumed);
}

TEST(Sweep, RefinementRescoresTheBestCellsWithTheTrainedProbe) {
  auto train = images(60), test = images(30);
  const fs::path dir = fresh_dir("refine");
  SweepOptions o = small_options();
  o.refine = 2;
  o.trained.epochs = 3;
  const SweepResult r = run_sweep(model(), *train, *test, dir, o);
  int refined = 0;
  for (const auto& c : r.cells) refined += c.refined_top1.has_value();
  EXPECT_EQ(refined, 2);
  ASSERT_TRUE(r.best.refined_top1.has_value());
  for (const auto& c : r.cells) {
    if (c.refined_top1) {
      EXPECT_LE(*c.refined_top1, *r.best.refined_top1);
    }
  }
  // The trained score is what Head::fit with the same recipe gives.
  const FeatureFile ftr =
      FeatureFile::open(dir / "features" / ("train_t" + std::to_string(r.best.t) + "_avg2.safetensors"));
  const FeatureFile fte =
      FeatureFile::open(dir / "features" / ("test_t" + std::to_string(r.best.t) + "_avg2.safetensors"));
  const Tensor& x = ftr.feature(r.best.t, r.best.block);
  Head head = Head::linear(x.shape(), 10);
  head.reset_parameters(o.trained.seed);
  TrainConfig tc = o.trained;
  tc.threads = 2;
  head.fit(x, *ftr.labels(), tc);
  EXPECT_EQ(head.evaluate(fte.feature(r.best.t, r.best.block), *fte.labels()).top1, *r.best.refined_top1);
}

TEST(Sweep, BadOptionsAndOtherSettingsAreRefused) {
  auto train = images(60), test = images(30);
  const fs::path dir = fresh_dir("bad");
  SweepOptions o = small_options();
  o.timesteps = {};
  EXPECT_THROW(run_sweep(model(), *train, *test, dir, o), ArgumentError);
  o = small_options();
  o.timesteps = {20, 20};
  EXPECT_THROW(run_sweep(model(), *train, *test, dir, o), ArgumentError);
  o = small_options();
  o.blocks = {3, 99};
  EXPECT_THROW(run_sweep(model(), *train, *test, dir, o), ArgumentError);
  o = small_options();
  o.timesteps = {2000};
  EXPECT_THROW(run_sweep(model(), *train, *test, dir, o), ArgumentError);
  o = small_options();
  o.refine = -1;
  EXPECT_THROW(run_sweep(model(), *train, *test, dir, o), ArgumentError);
  o = small_options();
  o.pools = {PoolSpec::parse("avg:64")};  // larger than every feature map
  EXPECT_THROW(run_sweep(model(), *train, *test, dir, o), ArgumentError);

  // A folder holding another sweep's features: ConfigError naming the difference, nothing touched.
  o = small_options();
  o.timesteps = {20};
  run_sweep(model(), *train, *test, dir, o);
  const std::string before = text(dir / "features" / "train_t20_avg2.safetensors");
  o.noise_seed = 99;
  try {
    run_sweep(model(), *train, *test, dir, o);
    ADD_FAILURE() << "another noise seed in the same folder was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("other settings"), std::string::npos) << e.what();
  }
  EXPECT_EQ(text(dir / "features" / "train_t20_avg2.safetensors"), before);

  // Data without labels.
  const fs::path npy = fresh_dir("npy");
  fs::create_directories(npy);
  io::save_npy(npy / "x.npy", train->images(0, 8));
  auto unlabelled = data::open_dataset(npy / "x.npy", std::nullopt, data::InputSpec{1, 32});
  o = small_options();
  EXPECT_THROW(run_sweep(model(), *unlabelled, *test, npy / "sweep", o), ArgumentError);
}

TEST(Sweep, SpearmanRankCorrelation) {
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  // Ties take their mean rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> 0.866...
  EXPECT_NEAR(spearman({5, 5, 7}, {1, 2, 3}), std::sqrt(3.0) / 2.0, 1e-12);
  EXPECT_TRUE(std::isnan(spearman({1, 1, 1}, {1, 2, 3})));
  EXPECT_THROW(spearman({1, 2}, {1, 2, 3}), ArgumentError);
}
