// `diffprobe sweep` on the bundled model and Fashion-MNIST: the table, JSON and heatmap are
// written and name the best cell; a rerun computes only what is missing (cells deleted, or the
// process killed with SIGKILL mid-extraction) and ends with the same table; bad flags get clear
// errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli/run_cli.hpp"

namespace fs = std::filesystem;
using cli_test::Result;
using cli_test::run;

namespace {

const fs::path kData = "/usr/share/datasets/fashion-mnist";

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

fs::path work(const std::string& name) {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "cli_test_sweep" / name;
  fs::remove_all(d);
  fs::create_directories(d.parent_path());
  return d;
}

std::string args(const fs::path& out, const std::string& extra = "") {
  return "sweep --weights " + q(fs::path(DIFFPROBE_SOURCE_DIR) / "models" / "fmnist_default.safetensors") +
         " --train " + q(kData / "train-images-idx3-ubyte.gz") + " --train-labels " +
         q(kData / "train-labels-idx1-ubyte.gz") + " --test " + q(kData / "t10k-images-idx3-ubyte.gz") +
         " --test-labels " + q(kData / "t10k-labels-idx1-ubyte.gz") +
         " --t 10,200 --blocks 8-9 --limit-train 200 --limit-test 100 --batch 32 --threads 2 --out " +
         q(out) + " " + extra;
}

// The table without its last column (the probes' wall times).
std::string scores(const fs::path& csv) {
  std::string out, line;
  std::ifstream f(csv);
  while (std::getline(f, line)) out += line.substr(0, line.rfind(',')) + "\n";
  return out;
}

}  // namespace

TEST(CliSweep, WritesTheTableAndHeatmapAndResumesWhatIsMissing) {
  ASSERT_TRUE(fs::exists(kData / "t10k-images-idx3-ubyte.gz"))
      << "bash scripts/setup.sh installs dataset-fashion-mnist";
  const fs::path out = work("plain");
  const Result r = run(args(out));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("best: t="), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 cells"), std::string::npos) << r.out;
  for (const char* f : {"sweep.csv", "sweep.json", "heatmap_avg2.png", "features/train_t10_avg2.safetensors",
                        "features/test_t200_avg2.safetensors", "cells/t200_b9_avg2.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const std::string table = scores(out / "sweep.csv");
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 5) << table;

  // Two cells lost: only they are computed again, and the table is the same.
  fs::remove(out / "cells" / "t200_b9_avg2.json");
  fs::remove(out / "cells" / "t10_b8_avg2.json");
  const Result again = run(args(out));
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("resuming: 600 of 600 images"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("resuming: 2 of 4 cells"), std::string::npos) << again.out;
  EXPECT_EQ(scores(out / "sweep.csv"), table);

  // Killed (SIGKILL) once the first feature file is finished: the rerun resumes and ends equal.
  const fs::path killed = work("killed");
  const std::string script =
      std::string(DIFFPROBE_CLI) + " " + args(killed) + " >/dev/null 2>&1 & pid=$!; i=0; while [ ! -f " +
      q(killed / "features" / "train_t10_avg2.safetensors") +
      " ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done; kill -9 $pid; wait $pid; exit 0";
  ASSERT_EQ(std::system(("bash -c " + cli_test::quote(script)).c_str()), 0);
  EXPECT_FALSE(fs::exists(killed / "sweep.csv"));
  const Result resumed = run(args(killed));
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("resuming: "), std::string::npos) << resumed.out;
  EXPECT_EQ(scores(killed / "sweep.csv"), table);
}

TEST(CliSweep, BadFlagsGetClearErrors) {
  const fs::path out = work("bad");
  Result r = run(args(out, "--blocks 9-3"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--blocks"), std::string::npos) << r.out;
  r = run(args(out, "--pool avg:2,avg:2"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("given twice"), std::string::npos) << r.out;
  r = run(args(out, "--blocks 1-40"));
  EXPECT_EQ(r.code, 2) << r.out;
  r = run(args(out, "--probe lasso"));
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("--probe"), std::string::npos) << r.out;
  r = run(args(out, "--head mlp"));
  EXPECT_NE(r.code, 0) << r.out;
}
