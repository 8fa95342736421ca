// run_extraction, the library's extraction pipeline: the file holds exactly what
// FeatureExtractor::extract computes, whatever the chunking, prefetch depth, sharding or
// cancellation and resumption; progress is reported; bad options are refused; launchers'
// environments give the shard.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/idx_dataset.hpp"
#include "diffprobe/data/open_dataset.hpp"
#include "diffprobe/features/extraction_job.hpp"
#include "diffprobe/features/feature_file.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

const fs::path kImages = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
const fs::path kLabels = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";

const UNet& model() {
  static const UNet net = UNet::random(UNetConfig::preset("fmnist_default"), 11);
  return net;
}

ExtractOptions extract_options() {
  ExtractOptions o;
  o.timesteps = {30, 200};
  o.blocks = {2, 6};
  o.pool = PoolSpec::parse("avg:2");
  o.batch_size = 8;
  o.exec.threads = 2;
  o.noise_seed = 5;
  return o;
}

fs::path dir() {
  const fs::path d = fs::temp_directory_path() / ("diffprobe_test_job_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

std::string bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::unique_ptr<data::Dataset> dataset(std::int64_t limit = 44) {
  return data::open_dataset(kImages, kLabels, data::InputSpec{1, 32}, limit);
}

}  // namespace

TEST(ExtractionJob, TheFileHoldsWhatTheExtractorComputes) {
  ASSERT_TRUE(fs::exists(kImages)) << "bash scripts/setup.sh installs dataset-fashion-mnist";
  const FeatureExtractor fx(model(), extract_options());
  auto ds = dataset();
  const fs::path out = dir() / "plain.safetensors";
  fs::remove(out);
  ExtractionJobOptions o;
  o.chunk_size = 12;  // not a multiple of the batch: chunks end mid-batch
  std::vector<std::int64_t> seen;
  o.on_progress = [&](const ExtractionProgress& p) {
    EXPECT_EQ(p.rows_total, 44);
    if (!seen.empty()) {
      EXPECT_GE(p.rows_done, seen.back());
    }
    seen.push_back(p.rows_done);
  };
  const ExtractionResult r = run_extraction(fx, *ds, out, o);
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(r.rows_computed, 44);
  EXPECT_EQ(r.rows_total, 44);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), 44);
  EXPECT_GT(r.forward_seconds, 0.0);
  EXPECT_LE(r.forward_seconds, r.seconds);

  const FeatureFile f = FeatureFile::open(out);
  const FeatureSet direct = fx.extract(ds->images(0, 44), 0);
  for (const auto& [key, t] : direct.items())
    EXPECT_EQ(f.feature(key.first, key.second).to_vector(), t.to_vector()) << key.first << "." << key.second;
  EXPECT_EQ(f.labels()->to_vector(), ds->labels()->to_vector());
  EXPECT_EQ(f.metadata().preprocess, "adm");

  // Another chunk size and prefetch depth: the same bytes.
  const fs::path again = dir() / "again.safetensors";
  fs::remove(again);
  ExtractionJobOptions o2;
  o2.chunk_size = 40;
  o2.prefetch = 1;
  run_extraction(fx, *ds, again, o2);
  // chunk_size is not in the file: the bytes are equal.
  EXPECT_EQ(bytes(again), bytes(out));
  // A second call finds the file finished and computes nothing.
  const ExtractionResult r3 = run_extraction(fx, *ds, again, o2);
  EXPECT_TRUE(r3.complete);
  EXPECT_EQ(r3.rows_computed, 0);
}

TEST(ExtractionJob, CancelledRunsKeepTheirChunksAndResumeToTheSameBytes) {
  const FeatureExtractor fx(model(), extract_options());
  auto ds = dataset();
  const fs::path whole = dir() / "whole.safetensors", cut = dir() / "cut.safetensors";
  fs::remove(whole);
  fs::remove(cut);
  fs::remove_all(cut.string() + ".partial");
  ExtractionJobOptions o;
  o.chunk_size = 8;
  run_extraction(fx, *ds, whole, o);
  std::atomic<bool> stop{false};
  o.cancel = &stop;
  o.on_progress = [&](const ExtractionProgress& p) {
    if (p.rows_done >= 16) stop = true;
  };
  EXPECT_THROW(run_extraction(fx, *ds, cut, o), CancelledError);
  EXPECT_FALSE(fs::exists(cut));
  EXPECT_TRUE(fs::exists(cut.string() + ".partial"));
  stop = false;
  o.on_progress = nullptr;
  const ExtractionResult r = run_extraction(fx, *ds, cut, o);
  EXPECT_GE(r.rows_resumed, 16);
  EXPECT_EQ(r.rows_resumed + r.rows_computed, 44);
  EXPECT_EQ(bytes(cut), bytes(whole));
}

TEST(ExtractionJob, ShardsMergeIntoTheOneProcessBytes) {
  const FeatureExtractor fx(model(), extract_options());
  auto ds = dataset();
  const fs::path one = dir() / "one.safetensors", out = dir() / "sharded.safetensors";
  fs::remove(one);
  fs::remove(out);
  fs::remove_all(parts_dir(out));
  ExtractionJobOptions o;
  o.chunk_size = 8;  // 6 chunks
  run_extraction(fx, *ds, one, o);
  for (int i : {2, 0, 1}) {  // any order: the last to finish merges
    o.shard = {i, 3};
    const ExtractionResult r = run_extraction(fx, *ds, out, o);
    EXPECT_EQ(r.complete, i == 1);
    EXPECT_EQ(r.merged, i == 1);
  }
  EXPECT_EQ(bytes(out), bytes(one));
  EXPECT_FALSE(fs::exists(parts_dir(out)));
  // More shards than chunks, and malformed shards, are refused.
  o.shard = {0, 7};
  EXPECT_THROW(run_extraction(fx, *ds, dir() / "seven.safetensors", o), ArgumentError);
  EXPECT_THROW(Shard::parse("3/3"), ArgumentError);
  EXPECT_THROW(Shard::parse("1/0"), ArgumentError);
  EXPECT_THROW(Shard::parse("a/2"), ArgumentError);
  EXPECT_EQ(Shard::parse("4/9"), (Shard{4, 9}));
  EXPECT_EQ(Shard::parse("4/9").str(), "4/9");
  EXPECT_EQ(part_path(out, {3, 12}).filename(), "part-00003-of-00012.safetensors");
}

TEST(ExtractionJob, BadOptionsAreRefused) {
  const FeatureExtractor fx(model(), extract_options());
  auto ds = dataset();
  const fs::path out = dir() / "bad.safetensors";
  ExtractionJobOptions o;
  o.copies = 2;  // the eval transform is not random
  EXPECT_THROW(run_extraction(fx, *ds, out, o), ArgumentError);
  o = {};
  o.prefetch = 0;
  EXPECT_THROW(run_extraction(fx, *ds, out, o), ArgumentError);
  o = {};
  o.extra_metadata["part.shard"] = "0/1";
  EXPECT_THROW(run_extraction(fx, *ds, out, o), ArgumentError);
  auto rgb = data::open_dataset(kImages, kLabels, data::InputSpec{3, 32}, 4);
  EXPECT_THROW(run_extraction(fx, *rgb, out, {}), ShapeError);
  EXPECT_FALSE(fs::exists(out));
}

TEST(ExtractionJob, LaunchersEnvironmentGivesTheShard) {
  EXPECT_EQ(detect_launch().launcher, "");  // ctest starts tests without a launcher
  ::setenv("OMPI_COMM_WORLD_RANK", "2", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  LaunchInfo l = detect_launch();
  EXPECT_EQ(l.launcher, "open-mpi");
  EXPECT_EQ(l.shard, (Shard{2, 4}));
  EXPECT_EQ(l.local_rank, 1);
  ::setenv("OMPI_COMM_WORLD_RANK", "4", 1);  // out of range: ignored
  ::setenv("SLURM_PROCID", "0", 1);
  ::setenv("SLURM_NTASKS", "8", 1);
  l = detect_launch();
  EXPECT_EQ(l.launcher, "slurm");
  EXPECT_EQ(l.shard, (Shard{0, 8}));
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "SLURM_PROCID", "SLURM_NTASKS"})
    ::unsetenv(v);
}
