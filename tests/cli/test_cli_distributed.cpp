// Sharded extraction: shards (sequential, concurrent, job-array style), `diffprobe merge` and
// `mpirun -np 2` give files that equal the one-process file byte for byte; a run killed with
// SIGKILL at random moments resumes to the same bytes and the output path never holds a partial
// file; reruns with other settings or shard counts are refused and touch nothing; a corrupt part
// is caught by its checksum; a full disk is a clear error and the run resumes once there is room.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "cli/run_cli.hpp"
#include "diffprobe/diffprobe.hpp"

namespace fs = std::filesystem;
using cli_test::Result;
using cli_test::run;

namespace {

const std::string kData = "/usr/share/datasets/fashion-mnist/";
const std::string kModel = std::string(DIFFPROBE_SOURCE_DIR) + "/models/fmnist_default.safetensors";

fs::path work() {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / ("cli_test_distributed_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

// 320 test images, two timesteps and blocks, chunks of 64 rows (5 chunks).
std::string args(const fs::path& out, const std::string& extra = "") {
  return "extract --weights " + q(kModel) + " --input " + kData + "t10k-images-idx3-ubyte.gz --labels " +
         kData +
         "t10k-labels-idx1-ubyte.gz --t 50,90 --blocks 5,9 --pool avg:2 --batch 32 --chunk 64 --limit 320 "
         "--threads 1 --out " +
         q(out) + " " + extra;
}

std::string bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void clean(const fs::path& out) {
  fs::remove(out);
  fs::remove_all(out.string() + ".partial");
  fs::remove_all(out.string() + ".parts");
}

class Distributed : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = work();
    one_ = dir_ / "one.safetensors";
    const Result r = run(args(one_));
    ASSERT_EQ(r.code, 0) << r.out;
    reference_ = bytes(one_);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static inline fs::path dir_, one_;
  static inline std::string reference_;
};

std::string cli() { return std::string(DIFFPROBE_CLI); }

bool have_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

}  // namespace

TEST_F(Distributed, ShardsInTurnThenTheLastMergesToTheOneProcessBytes) {
  const fs::path out = dir_ / "three.safetensors";
  clean(out);
  for (int i = 0; i < 3; ++i) {
    const Result r = run(args(out, "--shard " + std::to_string(i) + "/3"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(fs::exists(out), i == 2) << "only the last shard to finish assembles the file";
  }
  EXPECT_EQ(bytes(out), reference_);
  EXPECT_FALSE(fs::exists(out.string() + ".parts")) << "parts are removed after the merge";
  // Rerunning any shard now finds the finished file and computes nothing.
  const Result again = run(args(out, "--shard 1/3"));
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("already complete"), std::string::npos) << again.out;
}

TEST_F(Distributed, ConcurrentShardsAndExplicitMergeGiveTheSameBytes) {
  const fs::path out = dir_ / "four.safetensors";
  clean(out);
  // Four shards at once (as a job array would run them): one of them merges, once.
  std::string cmd;
  for (int i = 0; i < 4; ++i)
    cmd += cli() + " " + args(out, "--shard " + std::to_string(i) + "/4") + " > /dev/null 2>&1 & ";
  ASSERT_EQ(std::system((cmd + "wait").c_str()), 0);
  EXPECT_EQ(bytes(out), reference_);
  // --no-merge leaves the parts; `diffprobe merge` assembles them (and says so).
  const fs::path out2 = dir_ / "merged.safetensors";
  clean(out2);
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(run(args(out2, "--no-merge --shard " + std::to_string(i) + "/2")).code, 0);
  EXPECT_FALSE(fs::exists(out2));
  Result r = run("merge --out " + q(out2) + " --keep-parts");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(bytes(out2), reference_);
  EXPECT_TRUE(fs::exists(diffprobe::part_path(out2, {1, 2})));
  r = run("merge --out " + q(out2));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("already"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out2.string() + ".parts"));
}

TEST_F(Distributed, ProbeOnTheShardFilesEqualsProbeOnTheMergedFile) {
  // A head trained on the parts (no merge) equals one trained on the merged file, to the last digit.
  const fs::path out = dir_ / "probe.safetensors";
  clean(out);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(run(args(out, "--no-merge --shard " + std::to_string(i) + "/3")).code, 0);
  std::string parts;
  for (int i = 0; i < 3; ++i) parts += (i ? "," : "") + diffprobe::part_path(out, {i, 3}).string();
  const std::string common =
      " --feature t50.b9 --epochs 3 --optimizer adamw --lr 1e-3 --standardize --threads 1";
  const Result a = run("probe --train " + q(one_) + " --test " + q(one_) + common);
  const Result b = run("probe --train " + q(parts) + " --test " + q(one_) + common);
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  const auto line = [](const std::string& s) { return s.substr(s.find("top-1")); };
  EXPECT_EQ(line(a.out), line(b.out));
}

TEST_F(Distributed, MpirunTwoRanksOnLoopbackEqualsOneProcess) {
  ASSERT_TRUE(have_mpirun()) << "mpirun is missing: bash scripts/setup.sh installs openmpi-bin";
  const fs::path out = dir_ / "mpi.safetensors";
  clean(out);
  const std::string cmd = "mpirun --allow-run-as-root --oversubscribe -np 2 " + cli() + " " + args(out);
  const int rc = std::system((cmd + " > " + q(dir_ / "mpirun.log") + " 2>&1").c_str());
  const Result r = {rc, bytes(dir_ / "mpirun.log")};
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("shard 1/2"), std::string::npos) << "both ranks took a shard:\n" << r.out;
  EXPECT_EQ(bytes(out), reference_);
}

TEST_F(Distributed, MpirunRefusesAnOutputFolderTheRanksDoNotShare) {
  ASSERT_TRUE(have_mpirun()) << "mpirun is missing: bash scripts/setup.sh installs openmpi-bin";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give one rank its own mount of the output folder";
  // Rank 1 runs in a mount namespace where the output folder is an empty tmpfs of its own: the
  // ranks do not share it, which must be refused before any work, by every rank.
  const fs::path folder = dir_ / "unshared";
  fs::create_directories(folder);
  const fs::path out = folder / "out.safetensors";
  const std::string rank1 = "unshare -m --propagation private sh -c \"mount -t tmpfs tmpfs " +
                            folder.string() + " && exec " + cli() + " " + args(out) + "\"";
  const std::string cmd = "mpirun --allow-run-as-root --oversubscribe -np 1 " + cli() + " " + args(out) +
                          " : -np 1 " + rank1 + " > " + q(dir_ / "unshared.log") + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string log = bytes(dir_ / "unshared.log");
  if (log.find("unshare failed") != std::string::npos || log.find("mount: ") != std::string::npos)
    GTEST_SKIP() << "cannot make a private mount here:\n" << log;
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(log.find("not shared with rank 0"), std::string::npos) << log;
  EXPECT_EQ(log.find("rows in"), std::string::npos) << "no work may start:\n" << log;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".parts"));
}

TEST_F(Distributed, KilledAtRandomMomentsResumesToTheSameBytes) {
  const fs::path out = dir_ / "killed.safetensors";
  for (unsigned seed : {1u, 2u, 3u, 4u}) {
    clean(out);
    std::mt19937 rng(seed);
    const bool sharded = seed % 2 == 0;
    const std::string run_args = args(out, sharded ? "--shard " + std::to_string(seed % 3) + "/3" : "");
    // Kill twice somewhere in the run (about 3 s of work in one process).
    for (int k = 0; k < 2; ++k) {
      const int ms = std::uniform_int_distribution<int>(200, 2500)(rng);
      const std::string cmd = "timeout -s KILL " + std::to_string(ms / 1000.0) + " " + cli() + " " +
                              run_args + " > /dev/null 2>&1";
      (void)std::system(cmd.c_str());
      // Never a partial file at the final path: either nothing or the complete file.
      if (fs::exists(out)) {
        EXPECT_EQ(bytes(out), reference_) << "seed " << seed;
      }
    }
    if (sharded) {
      for (int i = 0; i < 3; ++i)
        ASSERT_EQ(run(args(out, "--shard " + std::to_string(i) + "/3")).code, 0) << "seed " << seed;
    } else {
      const Result r = run(run_args);
      ASSERT_EQ(r.code, 0) << r.out;
    }
    EXPECT_EQ(bytes(out), reference_) << "seed " << seed;
  }
  // An MPI run killed mid-way, rerun.
  if (have_mpirun()) {
    clean(out);
    const std::string cmd = "mpirun --allow-run-as-root --oversubscribe -np 2 " + cli() + " " + args(out);
    (void)std::system(
        ("timeout -s KILL 3 " + cmd + " > /dev/null 2>&1; pkill -KILL -f " + q(out) + " > /dev/null 2>&1")
            .c_str());
    EXPECT_FALSE(fs::exists(out) && bytes(out) != reference_);
    ASSERT_EQ(std::system((cmd + " > /dev/null 2>&1").c_str()), 0);
    EXPECT_EQ(bytes(out), reference_);
  }
}

TEST_F(Distributed, OtherSettingsOrShardCountsAreRefusedAndNothingIsTouched) {
  const fs::path out = dir_ / "refuse.safetensors";
  clean(out);
  ASSERT_EQ(run(args(out, "--no-merge --shard 0/3")).code, 0);
  const std::string part0 = bytes(diffprobe::part_path(out, {0, 3}));
  struct Case {
    std::string extra, expect;
  };
  for (const Case& c :
       {Case{"--shard 1/2", "3-way split"}, Case{"", "3-way split"},
        Case{"--shard 0/3 --noise-seed 7", "noise_seed"}, Case{"--shard 0/3 --t 50,91", "timesteps"}}) {
    const Result r = run(args(out, c.extra));
    EXPECT_NE(r.code, 0) << c.extra << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.extra << "\n" << r.out;
    EXPECT_EQ(r.out.find("internal error"), std::string::npos) << r.out;
  }
  EXPECT_EQ(bytes(diffprobe::part_path(out, {0, 3})), part0);
  // Other weights (the same tensors saved again with other metadata: another SHA-256) for another
  // shard of the same output: refused before any work, naming the difference.
  const fs::path other = dir_ / "other_weights.safetensors";
  {
    diffprobe::io::NamedTensors w = diffprobe::io::load_safetensors(kModel);
    w.metadata["note"] = "a copy";
    diffprobe::io::save_safetensors(other, w);
  }
  std::string with_other = args(out, "--shard 1/3");
  with_other.replace(with_other.find(kModel), kModel.size(), other.string());
  const Result w = run(with_other);
  EXPECT_NE(w.code, 0) << w.out;
  EXPECT_NE(w.out.find("weights_sha256"), std::string::npos) << w.out;
  EXPECT_FALSE(fs::exists(diffprobe::part_path(out, {1, 3})));
  // A finished file with other settings is never overwritten.
  const Result done = run(args(one_, "--noise-seed 9"));
  EXPECT_NE(done.code, 0);
  EXPECT_NE(done.out.find("nothing is overwritten"), std::string::npos) << done.out;
  EXPECT_EQ(bytes(one_), reference_);
}

TEST_F(Distributed, ACorruptPartIsCaughtByItsChecksum) {
  const fs::path out = dir_ / "corrupt.safetensors";
  clean(out);
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(run(args(out, "--no-merge --shard " + std::to_string(i) + "/2")).code, 0);
  const fs::path p = diffprobe::part_path(out, {1, 2});
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-7, std::ios::end);
    f.put('\x5a');
  }
  const Result r = run("merge --out " + q(out));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("corrupt part"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("part-00001-of-00002"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(Distributed, AFullDiskIsAClearErrorAndTheRunResumesOnceThereIsRoom) {
  const fs::path mnt = dir_ / "tmpfs";
  fs::create_directories(mnt);
  // 320 rows x 4 features x 64x2x2 floats = 1.3 MB in chunks, as much again for the file: 1 MB is too little.
  if (::geteuid() != 0 || ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0)
    GTEST_SKIP() << "needs root to mount a small tmpfs (mount: " << std::strerror(errno) << ")";
  struct Unmount {
    fs::path p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const fs::path out = mnt / "full.safetensors";
  const Result r = run(args(out));
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("internal error"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out));
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", MS_REMOUNT, "size=64m"), 0) << std::strerror(errno);
  const Result again = run(args(out));
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("resuming"), std::string::npos)
      << "the chunks written before the disk filled are kept:\n"
      << again.out;
  EXPECT_EQ(bytes(out), reference_);
}
