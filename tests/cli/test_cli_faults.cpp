// Faults injected: `convert`, `probe --save` and `extract` killed with SIGKILL at random moments
// (several seeds, spread over the run's whole duration) leave their destination either absent or
// complete and equal to an uninterrupted run's bytes, never partial; a rerun then finishes with
// those bytes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "cli/run_cli.hpp"

namespace fs = std::filesystem;
using cli_test::Result;
using cli_test::run;

namespace {

const fs::path kData = "/usr/share/datasets/fashion-mnist";

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

fs::path work() {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "cli_test_faults";
  fs::create_directories(d);
  return d;
}

std::string bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

fs::path model() { return fs::path(DIFFPROBE_SOURCE_DIR) / "models" / "fmnist_default.safetensors"; }

// Runs `args` (writing `dest`) uninterrupted for the reference bytes and its duration, then kills
// it at `kills` random moments in [0, 1.2 x duration) and checks the destination each time.
void kill_at_random_moments(const std::string& args, const fs::path& dest, int kills, unsigned seed) {
  fs::remove_all(dest);
  const auto t0 = std::chrono::steady_clock::now();
  const Result ref = run(args);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(ref.code, 0) << ref.out;
  ASSERT_TRUE(fs::exists(dest));
  const std::string want = bytes(dest);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> when(0.0, 1.2 * seconds);
  int absent = 0, complete = 0;
  for (int k = 0; k < kills; ++k) {
    fs::remove_all(dest);
    const double d = when(rng);
    const std::string script = std::string(DIFFPROBE_CLI) + " " + args + " >/dev/null 2>&1 & pid=$!; sleep " +
                               std::to_string(d) + "; kill -9 $pid 2>/dev/null; wait $pid; exit 0";
    ASSERT_EQ(std::system(("bash -c " + cli_test::quote(script)).c_str()), 0);
    if (fs::exists(dest)) {
      EXPECT_EQ(bytes(dest), want) << "killed after " << d << " s: the destination is partial";
      ++complete;
    } else {
      ++absent;
    }
    // Whatever the kill left, the same command finishes with the same bytes.
    const Result again = run(args);
    ASSERT_EQ(again.code, 0) << "after a kill at " << d << " s: " << again.out;
    EXPECT_EQ(bytes(dest), want) << "rerun after a kill at " << d << " s";
  }
  ::testing::Test::RecordProperty("absent_after_kill", absent);
  ::testing::Test::RecordProperty("complete_after_kill", complete);
  std::printf("%d kills: destination absent %d times, complete %d times\n", kills, absent, complete);
}

}  // namespace

TEST(CliFaults, ConvertKilledLeavesNothingOrTheWholeFile) {
  const fs::path out = work() / "converted.safetensors";
  kill_at_random_moments("convert --weights " + q(model()) + " --dtype bf16 --out " + q(out), out, 6, 1);
}

TEST(CliFaults, ProbeSaveKilledLeavesNothingOrTheWholeHead) {
  ASSERT_TRUE(fs::exists(kData / "t10k-images-idx3-ubyte.gz"))
      << "bash scripts/setup.sh installs dataset-fashion-mnist";
  const fs::path feats = work() / "feats.safetensors";
  fs::remove(feats);
  const Result e =
      run("extract --weights " + q(model()) + " --input " + q(kData / "t10k-images-idx3-ubyte.gz") +
          " --labels " + q(kData / "t10k-labels-idx1-ubyte.gz") +
          " --t 10 --blocks 9 --pool avg:2 --limit 96 --threads 2 --out " + q(feats));
  ASSERT_EQ(e.code, 0) << e.out;
  const fs::path head = work() / "head.safetensors";
  kill_at_random_moments("probe --train " + q(feats) + " --test " + q(feats) +
                             " --feature t10.b9 --epochs 4 --threads 2 --save " + q(head),
                         head, 6, 2);
}

TEST(CliFaults, ExtractKilledLeavesNothingOrTheWholeFile) {
  const fs::path out = work() / "extract.safetensors";
  kill_at_random_moments(
      "extract --weights " + q(model()) + " --input " + q(kData / "t10k-images-idx3-ubyte.gz") +
          " --labels " + q(kData / "t10k-labels-idx1-ubyte.gz") +
          " --t 10,100 --blocks 4,9 --pool avg:2 --limit 80 --batch 8 --chunk 16 --threads 2 "
          "--out " +
          q(out),
      out, 5, 3);
}

// ---- Full and read-only file systems (a tmpfs mounted by the test: needs root) -----------------

namespace {

// A tmpfs mounted for the test's duration at `dir`, with mount(8) options (size=..., ro).
class TmpfsMount {
 public:
  TmpfsMount(fs::path dir, const std::string& options) : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    if (::geteuid() != 0) {
      reason_ = "mounting a file system needs root";
      return;
    }
    const std::string cmd = "mount -t tmpfs -o " + options + " tmpfs " + q(dir_) + " 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) reason_ = "mount -t tmpfs failed (no CAP_SYS_ADMIN here?)";
  }
  ~TmpfsMount() {
    if (reason_.empty()) std::system(("umount " + q(dir_)).c_str());
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  /// Empty when mounted, else why not (the test then skips with it).
  const std::string& unavailable() const { return reason_; }
  bool remount(const std::string& options) {
    return std::system(("mount -o remount," + options + " " + q(dir_)).c_str()) == 0;
  }

 private:
  fs::path dir_;
  std::string reason_;
};

std::string extract_args(const fs::path& out, const std::string& extra = "") {
  return "extract --weights " + q(model()) + " --input " + q(kData / "t10k-images-idx3-ubyte.gz") +
         " --labels " + q(kData / "t10k-labels-idx1-ubyte.gz") +
         " --t 10 --blocks 9 --pool none --limit 64 --batch 8 --chunk 16 --threads 2 " + extra + " --out " +
         q(out);
}

}  // namespace

TEST(CliFaults, ReadOnlyDestinationIsRefusedBeforeAnyWork) {
  const fs::path dir = work() / "ro";
  const TmpfsMount ro(dir, "size=1m,ro");
  if (!ro.unavailable().empty()) GTEST_SKIP() << ro.unavailable();
  // extract: before any image is decoded or forwarded.
  const Result e = run(extract_args(dir / "x.safetensors"));
  EXPECT_NE(e.code, 0);
  EXPECT_NE(e.out.find("Read-only file system"), std::string::npos) << e.out;
  EXPECT_NE(e.out.find((dir / "x.safetensors").string()), std::string::npos) << e.out;
  EXPECT_EQ(e.out.find("img/s"), std::string::npos) << "work was done before the error: " << e.out;
  // convert: before the weights are read.
  const Result c = run("convert --weights " + q(model()) + " --out " + q(dir / "c.safetensors"));
  EXPECT_NE(c.code, 0);
  EXPECT_NE(c.out.find("Read-only file system"), std::string::npos) << c.out;
  EXPECT_EQ(c.out.find("read 306 tensors"), std::string::npos) << "the weights were read first: " << c.out;
  // probe --save / --json: before training.
  const fs::path feats = work() / "ro_feats.safetensors";
  ASSERT_EQ(run(extract_args(feats, "--pool avg:2")).code, 0);
  for (const char* flag : {"--save", "--json"}) {
    const Result p = run("probe --train " + q(feats) + " --test " + q(feats) +
                         " --feature t10.b9 --epochs 2 " + flag + " " + q(dir / "h.out"));
    EXPECT_NE(p.code, 0) << flag;
    EXPECT_NE(p.out.find("Read-only file system"), std::string::npos) << flag << ": " << p.out;
    EXPECT_EQ(p.out.find("top-1"), std::string::npos) << flag << ": trained before failing: " << p.out;
  }
  // sweep: its output folder cannot be made.
  const Result s = run(
      "sweep --weights " + q(model()) + " --train " + q(kData / "t10k-images-idx3-ubyte.gz") +
      " --train-labels " + q(kData / "t10k-labels-idx1-ubyte.gz") + " --test " +
      q(kData / "t10k-images-idx3-ubyte.gz") + " --test-labels " + q(kData / "t10k-labels-idx1-ubyte.gz") +
      " --t 10 --blocks 9 --limit-train 32 --limit-test 32 " + "--out " + q(dir / "sweep"));
  EXPECT_NE(s.code, 0);
  EXPECT_NE(s.out.find("Read-only file system"), std::string::npos) << s.out;
}

TEST(CliFaults, ExtractOnAFullDiskFailsClearlyThenResumesToTheSameBytes) {
  ASSERT_TRUE(fs::exists(kData / "t10k-images-idx3-ubyte.gz"))
      << "bash scripts/setup.sh installs dataset-fashion-mnist";
  const fs::path ref = work() / "full_ref.safetensors";
  fs::remove(ref);
  ASSERT_EQ(run(extract_args(ref)).code, 0);  // 64 x 64x8x8 f32 = 1 MiB of features
  const std::string want = bytes(ref);

  // 320 KiB: the disk fills while chunks are written; 1400 KiB: every chunk fits, the final
  // file (assembled beside them) does not.
  for (const std::string size : {"320k", "1400k"}) {
    SCOPED_TRACE("tmpfs size=" + size);
    const fs::path dir = work() / ("full_" + size);
    TmpfsMount disk(dir, "size=" + size);
    if (!disk.unavailable().empty()) GTEST_SKIP() << disk.unavailable();
    const fs::path out = dir / "x.safetensors";
    const Result full = run(extract_args(out));
    EXPECT_NE(full.code, 0);
    EXPECT_NE(full.out.find("No space left on device"), std::string::npos) << full.out;
    EXPECT_FALSE(fs::exists(out)) << "a partial destination after ENOSPC";
    for (const auto& e : fs::directory_iterator(dir))  // no temporary file left behind
      EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
    // The same command, once there is room, resumes what was written and ends with the same bytes.
    ASSERT_TRUE(disk.remount("size=8m"));
    const Result again = run(extract_args(out));
    ASSERT_EQ(again.code, 0) << again.out;
    EXPECT_NE(again.out.find("resum"), std::string::npos) << "nothing was resumed: " << again.out;
    EXPECT_EQ(bytes(out), want);
  }
}

TEST(CliFaults, NoMmapReadsTheWeightsAndGivesTheSameBytes) {
  const fs::path a = work() / "mapped.safetensors", b = work() / "read.safetensors";
  fs::remove(a);
  fs::remove(b);
  ASSERT_EQ(run(extract_args(a, "--pool avg:2")).code, 0);
  const Result r = run(extract_args(b, "--pool avg:2 --no-mmap"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(bytes(a), bytes(b));
}
