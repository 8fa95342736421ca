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
