// Real-world image folders hold files that cannot be read (empty, truncated, not an image) next
// to odd valid ones (a PNG named .JPEG, grey JPEGs). By default such a file stops the extraction
// with an error naming it (the run is resumable: fix the file, rerun); with
// --on-bad-image skip it is skipped: its row stays, its features are NaN, the file's metadata
// lists it, the summary names it and `probe` leaves it out. Every other row is the same as with
// a valid file there (noise is keyed by row, not by what else is in the batch).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli/run_cli.hpp"
#include "diffprobe/data/image.hpp"
#include "diffprobe/features/feature_file.hpp"

namespace fs = std::filesystem;
using cli_test::Result;
using cli_test::run;
using namespace diffprobe;

namespace {

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

fs::path work() {
  const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "cli_test_bad_images";
  fs::create_directories(d);
  return d;
}

fs::path model() { return fs::path(DIFFPROBE_SOURCE_DIR) / "models" / "fmnist_default.safetensors"; }

data::Image picture(int seed, int channels) {
  data::Image img = data::Image::blank(37 + seed, 29 + 2 * seed, channels);
  for (std::size_t i = 0; i < img.samples.size(); ++i)
    img.samples[i] = static_cast<std::uint16_t>((i * (7 + seed) + seed * 31) % 256);
  return img;
}

// The folder's files in ImageFolder order (class a: 0.png, 1.JPEG, 2.png; class b: 3.jpg,
// 4.png, 5.jpg); with `broken`, 2.png is empty and 4.png truncated.
void make_folder(const fs::path& root, bool broken) {
  fs::remove_all(root);
  fs::create_directories(root / "a");
  fs::create_directories(root / "b");
  data::write_png(root / "a" / "0.png", picture(0, 3));
  data::write_png(root / "a" / "1.JPEG", picture(1, 3));  // a PNG under a JPEG name
  data::write_png(root / "a" / "2.png", picture(2, 1));
  data::write_jpeg(root / "b" / "3.jpg", picture(3, 3));
  data::write_png(root / "b" / "4.png", picture(4, 3));
  data::write_jpeg(root / "b" / "5.jpg", picture(5, 1));  // grey JPEG
  if (!broken) return;
  std::ofstream(root / "a" / "2.png", std::ios::trunc).close();  // zero bytes
  const auto size = fs::file_size(root / "b" / "4.png");
  fs::resize_file(root / "b" / "4.png", size / 2);  // cut in the middle of the image data
}

std::string extract(const fs::path& in, const fs::path& out, const std::string& extra = "") {
  return "extract --weights " + q(model()) + " --input " + q(in) +
         " --t 10 --blocks 4 --pool avg:2 --batch 4 --chunk 4 --threads 2 " + extra + " --out " + q(out);
}

}  // namespace

TEST(CliBadImages, StopNamesTheFileAndSkipKeepsEveryOtherRow) {
  const fs::path good = work() / "good", bad = work() / "bad";
  make_folder(good, false);
  make_folder(bad, true);
  const fs::path ref = work() / "good.safetensors", out = work() / "bad.safetensors";
  fs::remove(ref);
  fs::remove(out);
  fs::remove_all(work() / "bad.safetensors.partial");
  const Result g = run(extract(good, ref));
  ASSERT_EQ(g.code, 0) << g.out;

  // The default: stop, naming the file; nothing written.
  const Result stop = run(extract(bad, out));
  EXPECT_NE(stop.code, 0);
  EXPECT_NE(stop.out.find((bad / "a" / "2.png").string()), std::string::npos) << stop.out;
  EXPECT_FALSE(fs::exists(out));

  // Skip: rerunning the same extraction with --on-bad-image skip resumes and finishes.
  const Result skip = run(extract(bad, out, "--on-bad-image skip"));
  ASSERT_EQ(skip.code, 0) << skip.out;
  EXPECT_NE(skip.out.find("skipped 2 unreadable images"), std::string::npos) << skip.out;
  EXPECT_NE(skip.out.find("row 2: "), std::string::npos) << skip.out;
  EXPECT_NE(skip.out.find("row 4: "), std::string::npos) << skip.out;
  EXPECT_NE(skip.out.find((bad / "b" / "4.png").string()), std::string::npos) << skip.out;

  const FeatureFile want = FeatureFile::open(ref), got = FeatureFile::open(out);
  const auto& rows = got.metadata().skipped_rows;
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].row, 2);
  EXPECT_EQ(rows[1].row, 4);
  EXPECT_NE(rows[0].error.find("2.png"), std::string::npos) << rows[0].error;
  ASSERT_EQ(got.size(), 6);
  const std::vector<float> a = want.feature("t10.b4").to_vector(), b = got.feature("t10.b4").to_vector();
  const std::size_t per = a.size() / 6;
  for (std::size_t r = 0; r < 6; ++r)
    for (std::size_t k = 0; k < per; ++k) {
      if (r == 2 || r == 4)
        ASSERT_TRUE(std::isnan(b[r * per + k])) << "row " << r;
      else
        ASSERT_EQ(a[r * per + k], b[r * per + k]) << "row " << r << " differs from a run without bad files";
    }
  EXPECT_EQ(got.labels()->to_vector(), want.labels()->to_vector());

  // The finished file is recognised as this extraction's (the list is a finding, not a setting).
  const Result again = run(extract(bad, out, "--on-bad-image skip"));
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("already complete"), std::string::npos) << again.out;

  // probe leaves the two rows out.
  const Result p =
      run("probe --train " + q(out) + " --test " + q(out) + " --feature t10.b4 --epochs 3 --threads 2");
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("left out 2 rows of the training features"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("train 4  test 4"), std::string::npos) << p.out;
}

TEST(CliBadImages, SkipIsRefusedWithSharding) {
  const fs::path bad = work() / "bad_shard";
  make_folder(bad, true);
  const Result r =
      run(extract(bad, work() / "shard.safetensors", "--on-bad-image skip --shard 0/2 --chunk 2"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("not supported with sharding"), std::string::npos) << r.out;
}
