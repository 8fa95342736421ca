// Every flag of the `diffprobe` command (info, convert, extract, probe), each with an effect the
// test can see: the features, names, shapes, dtypes and metadata of the files written (read back
// with the library), the numbers printed, or a clear error for a bad value. Workloads are tiny
// (a few Fashion-MNIST images, shallow blocks, one to a few epochs) so the whole file runs in
// seconds.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/run_cli.hpp"
#include "diffprobe/diffprobe.hpp"

namespace fs = std::filesystem;
using namespace diffprobe;

namespace {

// ---- Running the program ------------------------------------------------------------------

using cli_test::Result;
using cli_test::run;

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

/// A bad value: non-zero exit, a message naming the problem, never an internal error.
void expect_refused(const std::string& args, const std::vector<std::string>& expect) {
  const Result r = run(args);
  EXPECT_NE(r.code, 0) << args << "\n" << r.out;
  EXPECT_NE(r.code, 4) << args << "\n" << r.out;
  for (const auto& e : expect)
    EXPECT_TRUE(has(r.out, e)) << "expected '" << e << "' for: " << args << "\n" << r.out;
  EXPECT_FALSE(has(r.out, "internal error")) << args << "\n" << r.out;
}

const std::string kData = "/usr/share/datasets/fashion-mnist/";
const std::string kTestImages = kData + "t10k-images-idx3-ubyte.gz";
const std::string kTestLabels = kData + "t10k-labels-idx1-ubyte.gz";
const std::string kTrainImages = kData + "train-images-idx3-ubyte.gz";
const std::string kTrainLabels = kData + "train-labels-idx1-ubyte.gz";
const fs::path kModel = fs::path(DIFFPROBE_SOURCE_DIR) / "models" / "fmnist_default.safetensors";
constexpr std::int64_t kN = 8;  // images in the reference extraction

// One folder per test process (ctest runs the tests as separate processes, possibly at once);
// removed at the end when everything passed.
fs::path work() {
  static const fs::path d = [] {
    const fs::path p = fs::path(DIFFPROBE_BINARY_DIR) / "cli_flags_test" / std::to_string(::getpid());
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
  }();
  return d;
}

class RemoveWorkFolder : public ::testing::Environment {
 public:
  void TearDown() override {
    const fs::path d = fs::path(DIFFPROBE_BINARY_DIR) / "cli_flags_test" / std::to_string(::getpid());
    if (::testing::UnitTest::GetInstance()->Passed()) {
      std::error_code ec;
      fs::remove_all(d, ec);
    } else if (fs::exists(d)) {
      std::printf("[cli flags] files kept in %s\n", d.string().c_str());
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kCleanUp =
    ::testing::AddGlobalTestEnvironment(new RemoveWorkFolder);

// ---- Extraction helpers ---------------------------------------------------------------------

/// `extract` with the bundled model on the first `limit` t10k images (with labels), t 50, block 2
/// (cheap: a ResBlock at 32x32), avg:2 pooling, 2 threads; `extra` comes last, so it overrides.
std::string extract_args(const std::string& extra, std::int64_t limit = kN) {
  return "extract --weights " + q(kModel) + " --input " + kTestImages + " --labels " + kTestLabels +
         " --t 50 --blocks 2 --pool avg:2 --batch 8 --threads 2 --limit " + std::to_string(limit) + " " +
         extra;
}

/// Runs `extract <args> --out <name>` into a fresh file and asserts success.
fs::path extract_ok(const std::string& args, const std::string& name) {
  const fs::path out = work() / name;
  fs::remove(out);
  fs::remove_all(out.string() + ".partial");
  const Result r = run(args + " --out " + q(out));
  EXPECT_EQ(r.code, 0) << args << "\n" << r.out;
  EXPECT_TRUE(fs::exists(out)) << args << "\n" << r.out;
  return out;
}

/// The reference extraction (default seed, fp32, avg:2), made once per process.
const fs::path& base() {
  static const fs::path p = extract_ok(extract_args(""), "base.safetensors");
  return p;
}

std::vector<float> values(const fs::path& file, const std::string& name = "t50.b2") {
  const FeatureFile f = FeatureFile::open(file);
  return f.feature(name).to_vector();
}

std::vector<std::int64_t> labels_of(const fs::path& file) {
  const FeatureFile f = FeatureFile::open(file);
  const auto l = f.labels();
  if (!l) return {};
  std::vector<std::int64_t> v(static_cast<std::size_t>(l->numel()));
  for (std::int64_t i = 0; i < l->numel(); ++i) v[static_cast<std::size_t>(i)] = l->data<std::int64_t>()[i];
  return v;
}

std::vector<std::int64_t> shape_of(const fs::path& file, const std::string& name = "t50.b2") {
  const FeatureFile f = FeatureFile::open(file);
  const Shape& s = f.feature(name).shape();
  std::vector<std::int64_t> v;
  for (int i = 0; i < s.rank(); ++i) v.push_back(s[i]);
  return v;
}

/// ||a - b|| / ||b||.
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    n += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}

std::vector<float> head_of(const std::vector<float>& v, std::size_t n) {
  return {v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)};
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

/// The config JSON that `info --preset fmnist_default` prints, written to a file once.
const fs::path& config_file() {
  static const fs::path p = [] {
    const Result r = run("info --preset fmnist_default");
    EXPECT_EQ(r.code, 0) << r.out;
    const auto b = r.out.find('{'), e = r.out.find("\n}");
    EXPECT_TRUE(b != std::string::npos && e != std::string::npos) << r.out;
    const fs::path f = work() / "fmnist_default.json";
    write_text(f, r.out.substr(b, e + 2 - b) + "\n");
    return f;
  }();
  return p;
}

/// The same config with another width: valid, but not the bundled weights' shape.
fs::path wrong_config_file() {
  std::string s = read_text(config_file());
  const auto at = s.find("\"num_channels\": 32");
  EXPECT_NE(at, std::string::npos) << s;
  s.replace(at, 18, "\"num_channels\": 64");
  const fs::path f = work() / "wide.json";
  write_text(f, s);
  return f;
}

/// The bundled weights without metadata, under a name that is no preset: the config must be
/// inferred from the shapes, and the image size cannot be.
const fs::path& plain_weights() {
  static const fs::path p = [] {
    io::NamedTensors w = io::load_safetensors(kModel);
    w.metadata.clear();
    const fs::path f = work() / "plain_unet.safetensors";
    io::save_safetensors(f, w);
    return f;
  }();
  return p;
}

/// A regular file, so that nothing can be written under it (even as root).
fs::path not_a_folder() {
  const fs::path f = work() / "not_a_folder";
  write_text(f, "a file\n");
  return f;
}

/// The reference images as the model sees them, and their labels, from the library.
data::IdxDataset reference_images(std::int64_t limit) {
  data::IdxOptions o;
  o.limit = limit;
  return data::IdxDataset(kTestImages, fs::path(kTestLabels), data::InputSpec{1, 32}, o);
}

std::string json_field(const std::string& text, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\"" + key + "\": (\"[^\"]*\"|[0-9.]+)"))) return "<missing>";
  return m[1];
}

double top1_of(const std::string& out) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex(R"(top-1 ([0-9.]+)%  top-5 ([0-9.]+)%)"))) return -1;
  return std::stod(m[1]);
}

/// Learning rates of the printed epoch lines.
std::vector<double> epoch_lrs(const std::string& out) {
  std::vector<double> v;
  const std::regex re(R"(epoch\s+\d+\s+lr ([0-9.e+-]+)\s+loss)");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), re); it != std::sregex_iterator(); ++it)
    v.push_back(std::stod((*it)[1]));
  return v;
}

int count_of(const std::string& text, const std::string& part) {
  int n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// ---- Probe helpers ---------------------------------------------------------------------------

/// Train (64 train images) and test (32 t10k images) features t50.b3 and t50.b4, avg:2: [N, 32, 2, 2].
struct ProbeFiles {
  fs::path train, test;
};

const ProbeFiles& probe_files() {
  static const ProbeFiles f = [] {
    const std::string common = "--t 50 --blocks 3,4 --pool avg:2 --batch 32 --threads 2";
    ProbeFiles p;
    p.train = extract_ok("extract --weights " + q(kModel) + " --input " + kTrainImages + " --labels " +
                             kTrainLabels + " --limit 64 " + common,
                         "probe_train.safetensors");
    p.test = extract_ok("extract --weights " + q(kModel) + " --input " + kTestImages + " --labels " +
                            kTestLabels + " --limit 32 " + common,
                        "probe_test.safetensors");
    return p;
  }();
  return f;
}

std::string probe_args(const std::string& extra) {
  const auto& f = probe_files();
  return "probe --train " + q(f.train) + " --test " + q(f.test) + " --feature t50.b4 --threads 2 " + extra;
}

Result probe_ok(const std::string& extra) {
  const Result r = run(probe_args(extra));
  EXPECT_EQ(r.code, 0) << extra << "\n" << r.out;
  return r;
}

/// Every parameter of a saved head, by name.
std::map<std::string, std::vector<float>> head_weights(const fs::path& p) {
  std::map<std::string, std::vector<float>> m;
  const Head h = Head::load(p);
  for (const auto& [name, t] : h.state_dict()) m[name] = t.to_vector();
  return m;
}

/// Trains with `extra` and saves the head; its weights.
std::map<std::string, std::vector<float>> trained(const std::string& extra, const std::string& name) {
  const fs::path p = work() / (name + ".safetensors");
  fs::remove(p);
  const Result r = probe_ok("--epochs 2 " + extra + " --save " + q(p));
  if (r.code != 0) return {};
  return head_weights(p);
}

}  // namespace

// =============================================================================================
// info
// =============================================================================================

TEST(CliInfo, WeightsPresetAndConfigDescribeTheSameModel) {
  Result r = run("info --weights " + q(kModel));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: preset fmnist_default (from the file name)")) << r.out;
  EXPECT_TRUE(has(r.out, "parameters: 2005441")) << r.out;
  EXPECT_TRUE(has(r.out, "blocks 1..19 (0 = out)")) << r.out;

  r = run("info --weights " + q(kModel) + " --preset fmnist_default");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: preset fmnist_default\n")) << r.out;

  r = run("info --weights " + q(kModel) + " --config " + q(config_file()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: given by the caller")) << r.out;
  EXPECT_TRUE(has(r.out, "parameters: 2005441")) << r.out;

  r = run("info --preset fmnist_default");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: preset fmnist_default")) << r.out;
  EXPECT_TRUE(has(r.out, "parameters: 2005441")) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\n\s+19\s+output_blocks\.8\s+32x32x32)"))) << r.out;

  // Another preset is another model.
  r = run("info --preset cifar10_uncond_50M_500K");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(has(r.out, "parameters: 2005441")) << r.out;

  r = run("info --config " + q(config_file()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: " + config_file().string())) << r.out;
  EXPECT_TRUE(has(r.out, "parameters: 2005441")) << r.out;

  // A wider config has more parameters; against the weights it does not fit.
  r = run("info --config " + q(wrong_config_file()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(has(r.out, "parameters: 2005441")) << r.out;
  expect_refused("info --weights " + q(kModel) + " --config " + q(wrong_config_file()), {"do not match"});
  expect_refused("info --weights " + q(kModel) + " --preset 256x256_diffusion_uncond",
                 {"do not match", "missing keys"});

  expect_refused("info", {"--weights", "--preset", "--config"});
  expect_refused("info --preset no_such_model", {"no_such_model"});
  expect_refused("info --config /nonexistent_cfg.json", {"nonexistent_cfg.json"});
  expect_refused("info --weights /nonexistent_w.safetensors", {"nonexistent_w.safetensors"});
}

TEST(CliInfo, ImageSize) {
  // With a preset: the size is replaced, shapes follow.
  Result r = run("info --preset fmnist_default --image-size 64");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "\"image_size\": 64")) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\n\s+1\s+input_blocks\.0\s+32x64x64)"))) << r.out;

  // With weights whose config is inferred: the size cannot be read from the shapes.
  r = run("info --weights " + q(plain_weights()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: inferred from the weights' shapes")) << r.out;
  EXPECT_TRUE(has(r.out, "assumed image_size = 64")) << r.out;
  r = run("info --weights " + q(plain_weights()) + " --image-size 32");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "\"image_size\": 32")) << r.out;
  EXPECT_TRUE(has(r.out, "\"attention_resolutions\": \"16,8\"")) << r.out;
  EXPECT_TRUE(has(r.out, "parameters: 2005441")) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\n\s+1\s+input_blocks\.0\s+32x32x32)"))) << r.out;

  expect_refused("info --preset fmnist_default --image-size 12", {"12"});
  expect_refused("info --preset fmnist_default --image-size x", {"--image-size"});
}

// =============================================================================================
// convert
// =============================================================================================

TEST(CliConvert, WeightsOutAndDtype) {
  const fs::path c32 = work() / "c32.safetensors", c16 = work() / "c16.safetensors",
                 cb16 = work() / "cbf16.safetensors";
  for (const auto& [p, dtype] : {std::pair{c32, "fp32"}, std::pair{c16, "fp16"}, std::pair{cb16, "bf16"}}) {
    fs::remove(p);
    const Result r = run("convert --weights " + q(kModel) + " --out " + q(p) + " --dtype " + dtype);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(has(r.out, "read 306 tensors")) << r.out;
    ASSERT_TRUE(fs::exists(p));
  }
  const io::NamedTensors orig = io::load_safetensors(kModel);
  const std::map<fs::path, DType> expect = {{c32, DType::F32}, {c16, DType::F16}, {cb16, DType::BF16}};
  for (const auto& [p, dt] : expect) {
    const io::NamedTensors w = io::load_safetensors(p);
    EXPECT_EQ(w.size(), orig.size()) << p;
    for (const auto& [name, t] : w) EXPECT_EQ(t.dtype(), dt) << p << " " << name;
    EXPECT_EQ(w.metadata.at("format"), "diffprobe-unet") << p;
    EXPECT_EQ(w.metadata.at("converted_from"), "fmnist_default.safetensors") << p;
    EXPECT_NE(w.metadata.at("config").find("\"num_channels\":32"), std::string::npos)
        << w.metadata.at("config");
  }
  EXPECT_EQ(io::load_safetensors(c32).at("out.2.weight").to_vector(), orig.at("out.2.weight").to_vector());
  EXPECT_LT(fs::file_size(c16), fs::file_size(c32) * 6 / 10);
  EXPECT_LT(fs::file_size(cb16), fs::file_size(c32) * 6 / 10);

  // Features from the converted files (the config comes from their metadata): fp32 exactly the
  // same, fp16 / bf16 close but not equal.
  const auto ref = values(base());
  const auto f32 = values(extract_ok(extract_args("--weights " + q(c32)), "from_c32.safetensors"));
  const auto f16 = values(extract_ok(extract_args("--weights " + q(c16)), "from_c16.safetensors"));
  const auto fb16 = values(extract_ok(extract_args("--weights " + q(cb16)), "from_cbf16.safetensors"));
  EXPECT_EQ(f32, ref);
  EXPECT_NE(f16, ref);
  EXPECT_NE(fb16, ref);
  EXPECT_LT(rel_err(f16, ref), 1e-2);
  EXPECT_LT(rel_err(fb16, ref), 5e-2);

  expect_refused("convert --weights " + q(kModel) + " --out " + q(work() / "x.safetensors") + " --dtype fp8",
                 {"fp8"});
  expect_refused("convert --weights " + q(kModel), {"--out"});
  expect_refused("convert --weights /nonexistent_w.pt --out " + q(work() / "x.safetensors"),
                 {"nonexistent_w.pt"});
  expect_refused("convert --weights " + q(kModel) + " --out " + q(not_a_folder() / "x.safetensors"),
                 {"not_a_folder/x.safetensors"});
}

TEST(CliConvert, PresetConfigAndNoCheck) {
  const fs::path out = work() / "conv.safetensors";
  fs::remove(out);
  Result r = run("convert --weights " + q(kModel) + " --out " + q(out) + " --preset fmnist_default");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: preset fmnist_default\n")) << r.out;
  EXPECT_TRUE(fs::exists(out));

  fs::remove(out);
  r = run("convert --weights " + q(kModel) + " --out " + q(out) + " --config " + q(config_file()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "config: given by the caller")) << r.out;
  EXPECT_TRUE(fs::exists(out));

  // Validation against a config the weights do not fit: refused, nothing written.
  fs::remove(out);
  expect_refused("convert --weights " + q(kModel) + " --out " + q(out) + " --preset 256x256_diffusion_uncond",
                 {"do not match", "missing keys"});
  expect_refused(
      "convert --weights " + q(kModel) + " --out " + q(out) + " --config " + q(wrong_config_file()),
      {"do not match"});
  expect_refused("convert --weights " + q(kModel) + " --out " + q(out) + " --preset no_such_preset",
                 {"no_such_preset"});
  EXPECT_FALSE(fs::exists(out));

  // A safetensors file that is no U-Net (a feature file): refused unless --no-check.
  expect_refused("convert --weights " + q(base()) + " --out " + q(out), {"missing keys", "unexpected"});
  EXPECT_FALSE(fs::exists(out));
  r = run("convert --weights " + q(base()) + " --out " + q(out) + " --no-check");
  ASSERT_EQ(r.code, 0) << r.out;
  const io::NamedTensors w = io::load_safetensors(out);
  EXPECT_EQ(w.names(), (std::vector<std::string>{"t50.b2", "labels"}));
  EXPECT_EQ(w.metadata.at("converted_from"), "base.safetensors");
  EXPECT_EQ(w.metadata.at("format"), "diffprobe.features") << "not validated, so not marked as a U-Net";
  EXPECT_EQ(w.at("t50.b2").to_vector(), values(base()));
}

// =============================================================================================
// extract
// =============================================================================================

TEST(CliExtract, WeightsAndOut) {
  const FeatureFile f = FeatureFile::open(base());
  EXPECT_EQ(f.size(), kN);
  EXPECT_EQ(f.names(), std::vector<std::string>{"t50.b2"});
  EXPECT_EQ(f.metadata().weights_sha256, file_sha256(kModel));
  EXPECT_FALSE(fs::exists(base().string() + ".partial"));
  // Other weights, other features (the same net with every weight rounded to bf16 is close).
  const fs::path rounded = work() / "rounded_unet.safetensors";
  ASSERT_EQ(run("convert --weights " + q(kModel) + " --out " + q(rounded) + " --dtype bf16").code, 0);
  const fs::path other = extract_ok(extract_args("--weights " + q(rounded)), "other_weights.safetensors");
  EXPECT_EQ(FeatureFile::open(other).metadata().weights_sha256, file_sha256(rounded));
  EXPECT_NE(values(other), values(base()));
  // --out: the file lands there (its folder made when missing); a place that cannot be written
  // (under a regular file) is refused.
  const fs::path nested = work() / "new_folder" / "nested.safetensors";
  fs::remove_all(work() / "new_folder");
  const Result r = run(extract_args("--out " + q(nested)));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "wrote " + nested.string())) << r.out;
  EXPECT_EQ(read_text(nested), read_text(base()));
  EXPECT_FALSE(fs::exists(nested.string() + ".partial"));
  expect_refused(extract_args("--out " + q(not_a_folder() / "f.safetensors")), {"not_a_folder"});
  expect_refused(extract_args("--weights " + q(fs::path(DIFFPROBE_SOURCE_DIR) / "README.md") + " --out " +
                              q(work() / "x.safetensors")),
                 {"README.md"});
}

TEST(CliExtract, PresetAndConfigOfTheRightModelChangeNothing) {
  const fs::path pre = extract_ok(extract_args("--preset fmnist_default"), "preset.safetensors");
  const fs::path cfg = extract_ok(extract_args("--config " + q(config_file())), "config.safetensors");
  EXPECT_EQ(values(pre), values(base()));
  EXPECT_EQ(values(cfg), values(base()));
  EXPECT_EQ(FeatureFile::open(cfg).metadata().config_json, FeatureFile::open(base()).metadata().config_json);
  const fs::path x = work() / "x.safetensors";
  expect_refused(extract_args("--preset 256x256_diffusion_uncond --out " + q(x)), {"do not match"});
  expect_refused(extract_args("--preset no_such_preset --out " + q(x)), {"no_such_preset"});
  expect_refused(extract_args("--config " + q(wrong_config_file()) + " --out " + q(x)), {"do not match"});
  expect_refused(extract_args("--config /nonexistent_cfg.json --out " + q(x)), {"nonexistent_cfg.json"});
}

TEST(CliExtract, ImageSizeForAnInferredConfig) {
  // Inferred without a size, the model takes 64x64 images: the IDX images are padded to 64, and
  // a 32x32 .npy does not fit.
  const fs::path x = work() / "x.safetensors";
  const fs::path f64 = extract_ok(extract_args("--weights " + q(plain_weights())), "plain64.safetensors");
  EXPECT_TRUE(has(FeatureFile::open(f64).metadata().config_json, "\"image_size\": 64"));
  EXPECT_TRUE(has(FeatureFile::open(f64).metadata().preprocessing, "to 64x64"));
  EXPECT_NE(values(f64), values(base()));
  const fs::path images = work() / "size_images.npy";
  io::save_npy(images, reference_images(2).images(0, 2));
  const std::string npy =
      "extract --weights " + q(plain_weights()) + " --input " + q(images) + " --t 50 --blocks 2 ";
  expect_refused(npy + "--out " + q(x), {"1x32x32", "1x64x64"});
  EXPECT_EQ(run(npy + "--image-size 32 --out " + q(x)).code, 0);
  // With --image-size 32, block 2 (before any attention, whose head count the shapes do not
  // tell) equals the bundled model's.
  const fs::path f =
      extract_ok(extract_args("--weights " + q(plain_weights()) + " --image-size 32"), "plain32.safetensors");
  EXPECT_TRUE(has(FeatureFile::open(f).metadata().config_json, "\"image_size\": 32"));
  EXPECT_TRUE(has(FeatureFile::open(f).metadata().preprocessing, "to 32x32"));
  EXPECT_EQ(values(f), values(base()));
  expect_refused(extract_args("--image-size 64 --out " + q(x)), {"do not match"});
}

TEST(CliExtract, InputAndLabelsIdx) {
  const auto ds = reference_images(kN);
  const auto expect = labels_of(base());
  ASSERT_EQ(expect.size(), static_cast<std::size_t>(kN));
  for (std::int64_t i = 0; i < kN; ++i)
    EXPECT_EQ(expect[static_cast<std::size_t>(i)], ds.labels()->data<std::int64_t>()[i]);
  EXPECT_TRUE(has(FeatureFile::open(base()).metadata().preprocessing, "t10k-images-idx3-ubyte.gz"));
  // Without --labels: no labels tensor, the same features.
  const fs::path nol = extract_ok("extract --weights " + q(kModel) + " --input " + kTestImages +
                                      " --t 50 --blocks 2 --pool avg:2 --threads 2 --limit 8",
                                  "nolabels.safetensors");
  EXPECT_FALSE(FeatureFile::open(nol).labels().has_value());
  EXPECT_EQ(values(nol), values(base()));
  // The train images are other images.
  const fs::path tr =
      extract_ok(extract_args("--input " + kTrainImages + " --labels " + kTrainLabels), "train8.safetensors");
  EXPECT_NE(values(tr), values(base()));
  const fs::path x = work() / "x.safetensors";
  expect_refused(extract_args("--labels /nonexistent_labels --out " + q(x)), {"nonexistent_labels"});
  expect_refused(extract_args("--input /nonexistent_images --out " + q(x)), {"nonexistent_images"});
}

TEST(CliExtract, InputNpyWithLabelsNpy) {
  // The reference images as a .npy [8, 1, 32, 32] f32 and their labels as .npy i64: the same
  // features as from the IDX file (the noise is keyed by the sample index, not the source).
  const auto ds = reference_images(kN);
  const fs::path images = work() / "images.npy", labels = work() / "labels.npy";
  io::save_npy(images, ds.images(0, kN));
  io::save_npy(labels, *ds.labels());
  const fs::path f = extract_ok("extract --weights " + q(kModel) + " --input " + q(images) + " --labels " +
                                    q(labels) + " --t 50 --blocks 2 --pool avg:2 --threads 2",
                                "npy.safetensors");
  EXPECT_EQ(values(f), values(base()));
  EXPECT_EQ(labels_of(f), labels_of(base()));
  // A .npy of the wrong size is refused.
  const fs::path small = work() / "small.npy";
  io::save_npy(small, Tensor::zeros(Shape{2, 1, 28, 28}));
  expect_refused("extract --weights " + q(kModel) + " --input " + q(small) + " --t 50 --blocks 2 --out " +
                     q(work() / "x.safetensors"),
                 {"28"});
}

TEST(CliExtract, InputImageFolder) {
  // Two classes of two 32x32 grey PNGs holding the first four reference images exactly.
  const auto ds = reference_images(4);
  const Tensor x = ds.images(0, 4);
  const fs::path root = work() / "folder";
  fs::remove_all(root);
  for (int i = 0; i < 4; ++i) {
    const fs::path dir = root / (i < 2 ? "class_a" : "class_b");
    fs::create_directories(dir);
    data::Image img = data::Image::blank(32, 32, 1);
    for (int y = 0; y < 32; ++y)
      for (int xx = 0; xx < 32; ++xx)
        img.at(y, xx, 0) =
            static_cast<std::uint16_t>(std::lround((x.item_at(i * 1024 + y * 32 + xx) + 1) * 127.5));
    data::write_png(dir / ("img" + std::to_string(i) + ".png"), img);
  }
  const fs::path f = extract_ok("extract --weights " + q(kModel) + " --input " + q(root) +
                                    " --t 50 --blocks 2 --pool avg:2 --threads 2",
                                "folder.safetensors");
  EXPECT_EQ(FeatureFile::open(f).size(), 4);
  EXPECT_EQ(labels_of(f), (std::vector<std::int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(values(f), head_of(values(base()), values(f).size()));
  expect_refused("extract --weights " + q(kModel) + " --input " + q(root) + " --labels " + kTestLabels +
                     " --t 50 --blocks 2 --out " + q(work() / "x.safetensors"),
                 {"--labels", "sub-folders"});
}

TEST(CliExtract, TimestepsAndBlocks) {
  const fs::path f = extract_ok(extract_args("--t 10,500 --blocks 1,out,3", 1), "tb.safetensors");
  const FeatureFile ff = FeatureFile::open(f);
  const auto& n = ff.names();
  EXPECT_EQ(std::set<std::string>(n.begin(), n.end()),
            (std::set<std::string>{"t10.b1", "t10.b0", "t10.b3", "t500.b1", "t500.b0", "t500.b3"}));
  EXPECT_EQ(n.size(), 6u);
  EXPECT_EQ(std::set<int>(ff.metadata().timesteps.begin(), ff.metadata().timesteps.end()),
            (std::set<int>{10, 500}));
  EXPECT_EQ(std::set<int>(ff.metadata().blocks.begin(), ff.metadata().blocks.end()),
            (std::set<int>{0, 1, 3}));
  EXPECT_EQ(shape_of(f, "t10.b1"), (std::vector<std::int64_t>{1, 32, 2, 2}));
  EXPECT_EQ(shape_of(f, "t10.b0"), (std::vector<std::int64_t>{1, 1, 2, 2}));  // the output: 1 channel
  EXPECT_NE(values(f, "t10.b1"), values(f, "t500.b1"));
  EXPECT_NE(values(f, "t10.b1"), values(f, "t10.b3"));
  // "0" is "out"; a single t / block gives exactly that one name.
  const fs::path g = extract_ok(extract_args("--t 10 --blocks 0", 1), "b0.safetensors");
  EXPECT_EQ(FeatureFile::open(g).names(), std::vector<std::string>{"t10.b0"});
  EXPECT_EQ(values(g, "t10.b0"), values(f, "t10.b0"));
  const fs::path x = work() / "x.safetensors";
  expect_refused(extract_args("--blocks 20 --out " + q(x)), {"block 20"});
  expect_refused(extract_args("--blocks 2,x --out " + q(x)), {"'x'"});
  expect_refused(extract_args("--t 50,abc --out " + q(x)), {"--t", "abc"});
  expect_refused(extract_args("--t -5 --out " + q(x)), {"-5"});
  expect_refused(extract_args("--t 1000 --out " + q(x)), {"timestep 1000"});
}

TEST(CliExtract, Pooling) {
  const fs::path none = extract_ok(extract_args("--pool none"), "pool_none.safetensors");
  const fs::path mx = extract_ok(extract_args("--pool max:2"), "pool_max.safetensors");
  const fs::path gap = extract_ok(extract_args("--pool gap"), "pool_gap.safetensors");
  const fs::path a4 = extract_ok(extract_args("--pool avg:4"), "pool_avg4.safetensors");
  EXPECT_EQ(shape_of(none), (std::vector<std::int64_t>{kN, 32, 32, 32}));
  EXPECT_EQ(shape_of(base()), (std::vector<std::int64_t>{kN, 32, 2, 2}));
  EXPECT_EQ(shape_of(mx), (std::vector<std::int64_t>{kN, 32, 2, 2}));
  EXPECT_EQ(shape_of(a4), (std::vector<std::int64_t>{kN, 32, 4, 4}));
  EXPECT_EQ(shape_of(gap), (std::vector<std::int64_t>{kN, 32, 1, 1}));
  EXPECT_EQ(FeatureFile::open(none).metadata().pooling, "none");
  EXPECT_EQ(FeatureFile::open(mx).metadata().pooling, "max:2");
  EXPECT_EQ(FeatureFile::open(gap).metadata().pooling, "gap");
  EXPECT_EQ(FeatureFile::open(base()).metadata().pooling, "avg:2");
  // Every pooled value from the unpooled map.
  const auto full = values(none), avg = values(base()), mxv = values(mx), g = values(gap), a4v = values(a4);
  double worst_avg = 0, worst_gap = 0, worst_a4 = 0;
  std::size_t max_mismatch = 0;
  for (std::int64_t nc = 0; nc < kN * 32; ++nc) {
    const float* m = full.data() + nc * 1024;
    double total = 0;
    for (int i = 0; i < 1024; ++i) total += m[i];
    worst_gap = std::max(worst_gap, std::abs(total / 1024 - g[static_cast<std::size_t>(nc)]));
    for (int p = 4, k = 0; k < 2; p = 2, ++k) {
      const int w = 32 / p;
      for (int py = 0; py < p; ++py)
        for (int px = 0; px < p; ++px) {
          double s = 0;
          float best = -INFINITY;
          for (int y = py * w; y < (py + 1) * w; ++y)
            for (int x = px * w; x < (px + 1) * w; ++x) {
              s += m[y * 32 + x];
              best = std::max(best, m[y * 32 + x]);
            }
          const auto at = static_cast<std::size_t>(nc * p * p + py * p + px);
          if (p == 2) {
            worst_avg = std::max(worst_avg, std::abs(s / (w * w) - avg[at]));
            if (best != mxv[at]) ++max_mismatch;
          } else {
            worst_a4 = std::max(worst_a4, std::abs(s / (w * w) - a4v[at]));
          }
        }
    }
  }
  EXPECT_LT(worst_avg, 1e-4);
  EXPECT_LT(worst_a4, 1e-4);
  EXPECT_LT(worst_gap, 1e-4);
  EXPECT_EQ(max_mismatch, 0u);
  EXPECT_NE(mxv, avg);
  const fs::path x = work() / "x.safetensors";
  expect_refused(extract_args("--pool avg:64 --out " + q(x)), {"pool size"});
  expect_refused(extract_args("--pool foo --out " + q(x)), {"'foo'"});
  expect_refused(extract_args("--pool max:0 --out " + q(x)), {"'0'"});
}

TEST(CliExtract, NoiseSeed) {
  const fs::path a = extract_ok(extract_args("--noise-seed 7"), "seed7a.safetensors");
  const fs::path b = extract_ok(extract_args("--noise-seed 7"), "seed7b.safetensors");
  const fs::path c = extract_ok(extract_args("--noise-seed 8"), "seed8.safetensors");
  EXPECT_EQ(read_text(a), read_text(b)) << "the same seed must give the same file";
  EXPECT_EQ(FeatureFile::open(a).metadata().noise_seed, 7u);
  EXPECT_EQ(FeatureFile::open(base()).metadata().noise_seed, 0u);
  EXPECT_NE(values(a), values(c));
  EXPECT_NE(values(a), values(base()));
  expect_refused(extract_args("--noise-seed x --out " + q(work() / "x.safetensors")), {"--noise-seed"});
}

TEST(CliExtract, NoNoise) {
  const auto ds = reference_images(kN);
  const fs::path images = work() / "nn_images.npy";
  io::save_npy(images, ds.images(0, kN));
  const std::string args = "extract --weights " + q(kModel) + " --input " + q(images) +
                           " --t 50 --blocks 2 --pool avg:2 --threads 2 --no-noise";
  const fs::path a = extract_ok(args, "nonoise_a.safetensors");
  const fs::path b = extract_ok(args + " --batch 3", "nonoise_b.safetensors");
  const fs::path seeded = extract_ok("extract --weights " + q(kModel) + " --input " + q(images) +
                                         " --t 50 --blocks 2 --pool avg:2 --threads 2",
                                     "nonoise_seeded.safetensors");
  EXPECT_EQ(values(a), values(b));
  EXPECT_NE(values(a), values(seeded));
  EXPECT_EQ(values(seeded), values(base()));
  // The clean input through the U-Net: the same as from the IDX file with --no-noise.
  const fs::path idx = extract_ok(extract_args("--no-noise"), "nonoise_idx.safetensors");
  EXPECT_EQ(values(idx), values(a));
  expect_refused(extract_args("--no-noise --noise-seed 3 --out " + q(work() / "x.safetensors")),
                 {"--noise-seed", "--no-noise"});
}

TEST(CliExtract, NoiseDraws) {
  const fs::path d3 = extract_ok(extract_args("--noise-draws 3"), "draws3.safetensors");
  EXPECT_EQ(FeatureFile::open(d3).metadata().noise_draws, 3);
  EXPECT_EQ(FeatureFile::open(base()).metadata().noise_draws, 1);
  const auto v3 = values(d3), v1 = values(base());
  EXPECT_NE(v3, v1);
  EXPECT_LT(rel_err(v3, v1), 1.0) << "an average of draws stays near a single draw";
  const fs::path x = work() / "x.safetensors";
  expect_refused(extract_args("--noise-draws 0 --out " + q(x)), {"noise_draws"});
  expect_refused(extract_args("--noise-draws -1 --out " + q(x)), {"noise_draws"});
}

TEST(CliExtract, LabelOnAnUnconditionalModel) {
  expect_refused(extract_args("--label 3 --out " + q(work() / "x.safetensors")), {"not class-conditional"});
  expect_refused(extract_args("--label x --out " + q(work() / "x.safetensors")), {"--label"});
}

TEST(CliExtract, BatchAndThreadsChangeNothing) {
  const auto ref = values(base());
  EXPECT_EQ(values(extract_ok(extract_args("--batch 1"), "batch1.safetensors")), ref);
  EXPECT_EQ(values(extract_ok(extract_args("--batch 7"), "batch7.safetensors")), ref);
  EXPECT_EQ(values(extract_ok(extract_args("--threads 1"), "threads1.safetensors")), ref);
  const fs::path x = work() / "x.safetensors";
  expect_refused(extract_args("--batch 0 --out " + q(x)), {"batch"});
  expect_refused(extract_args("--threads -1 --out " + q(x)), {"--threads"});
}

TEST(CliExtract, Device) {
  EXPECT_EQ(values(extract_ok(extract_args("--device cpu"), "cpu.safetensors")), values(base()));
  const fs::path cuda = work() / "cuda.safetensors";
  fs::remove(cuda);
  const Result r = run(extract_args("--device cuda --out " + q(cuda)));
  if (r.code == 0) {
    EXPECT_LT(rel_err(values(cuda), values(base())), 1e-3) << r.out;
  } else {
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_TRUE(has(r.out, "cuda")) << r.out;
    EXPECT_FALSE(has(r.out, "internal error")) << r.out;
  }
  expect_refused(extract_args("--device foo --out " + q(work() / "x.safetensors")), {"'foo'"});
}

TEST(CliExtract, PrecisionBf16) {
  const fs::path out = work() / "bf16.safetensors";
  fs::remove(out);
  const Result r = run(extract_args("--precision bf16 --out " + q(out)));
  if (r.code != 0) {
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_TRUE(has(r.out, "unsupported")) << r.out;
    EXPECT_TRUE(has(r.out, "bf16") || has(r.out, "BF16")) << r.out;
    GTEST_SKIP() << "no bf16 on this CPU: " << r.out;
  }
  const auto v = values(out), ref = values(base());
  EXPECT_NE(v, ref) << "bf16 arithmetic should round somewhere";
  EXPECT_LT(rel_err(v, ref), 5e-2);
  EXPECT_EQ(FeatureFile::open(out).feature("t50.b2").dtype(), DType::F32) << "--precision is not --dtype";
  expect_refused(extract_args("--precision fp16 --out " + q(work() / "x.safetensors")), {"fp16"});
}

// int8: per-image scales by default, calibrated ones from `calibrate`; the metadata says which.
TEST(CliExtract, PrecisionInt8AndCalibration) {
  const fs::path per_image = work() / "int8.safetensors";
  fs::remove(per_image);
  const Result r = run(extract_args("--precision int8 --out " + q(per_image)));
  if (r.code != 0) {
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_TRUE(has(r.out, "int8 needs a CPU with AVX512-VNNI")) << r.out;
    GTEST_SKIP() << "no int8 on this CPU: " << r.out;
  }
  const auto ref = values(base()), v = values(per_image);
  EXPECT_NE(v, ref) << "int8 must round somewhere";
  EXPECT_LT(rel_err(v, ref), 5e-2);
  EXPECT_EQ(FeatureFile::open(per_image).metadata().extra.at("int8_scales"), "per-image");
  EXPECT_EQ(FeatureFile::open(per_image).metadata().extra.at("precision"), "int8");

  // calibrate: on 16 training images at the extraction's t, to the block it needs
  const fs::path cal = work() / "cal.int8.json";
  fs::remove(cal);
  const Result c = run("calibrate --weights " + q(kModel) + " --input " + kTrainImages +
                       " --images 16 --t 50 --blocks 2 --batch 8 --threads 2 --out " + q(cal));
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_TRUE(has(c.out, "int8 convolutions calibrated")) << c.out;
  const Int8Calibration loaded = Int8Calibration::load(cal);
  EXPECT_EQ(loaded.images, 16);
  EXPECT_EQ(loaded.timesteps, std::vector<int>{50});
  EXPECT_EQ(loaded.weights_sha256, file_sha256(kModel));
  // Blocks 1-2 reach one int8 layer, block 2's ResBlock (block 1, the first convolution, stays bf16).
  EXPECT_EQ(loaded.scales.size(), 2u) << loaded.to_json();
  EXPECT_EQ(loaded.scales.count("input_blocks.1.0.in_layers.2"), 1u) << loaded.to_json();
  const fs::path calibrated =
      extract_ok(extract_args("--precision int8 --int8-calibration " + q(cal)), "int8_cal.safetensors");
  const auto vc = values(calibrated);
  EXPECT_NE(vc, v) << "calibrated scales are other scales than each image's own";
  EXPECT_LT(rel_err(vc, ref), 5e-2);
  EXPECT_TRUE(has(FeatureFile::open(calibrated).metadata().extra.at("int8_scales"), "calibrated sha256:"));

  // refused: a calibration without int8, one for other weights, a corrupt one, a missing one
  expect_refused(extract_args("--int8-calibration " + q(cal) + " --out " + q(work() / "x.safetensors")),
                 {"--int8-calibration", "--precision int8"});
  const fs::path other = work() / "other.int8.json";
  Int8Calibration wrong = loaded;
  wrong.weights_sha256 = std::string(64, 'a');
  wrong.save(other);
  expect_refused(extract_args("--precision int8 --int8-calibration " + q(other) + " --out " +
                              q(work() / "x.safetensors")),
                 {"made for another weights file"});
  std::ofstream(work() / "bad.int8.json") << "{\"format\": \"diffprobe.int8_calibration\"}";
  expect_refused(extract_args("--precision int8 --int8-calibration " + q(work() / "bad.int8.json") +
                              " --out " + q(work() / "x.safetensors")),
                 {"format_version"});
  expect_refused(extract_args("--precision int8 --int8-calibration " + q(work() / "none.json") + " --out " +
                              q(work() / "x.safetensors")),
                 {"cannot open"});
  expect_refused("calibrate --weights " + q(kModel) + " --input " + kTrainImages + " --method median --out " +
                     q(work() / "x.json"),
                 {"--method"});
}

TEST(CliExtract, Limit) {
  const fs::path f = extract_ok(extract_args("", 3), "limit3.safetensors");
  EXPECT_EQ(FeatureFile::open(f).size(), 3);
  EXPECT_EQ(values(f), head_of(values(base()), values(f).size()));
  const auto l = labels_of(base());
  EXPECT_EQ(labels_of(f), std::vector<std::int64_t>(l.begin(), l.begin() + 3));
  expect_refused(extract_args("--out " + q(work() / "x.safetensors"), -1), {"--limit"});
}

TEST(CliExtract, ChunkChangesNothing) {
  const fs::path f = extract_ok(extract_args("--chunk 3"), "chunk3.safetensors");
  EXPECT_EQ(read_text(f), read_text(base()));
  EXPECT_FALSE(fs::exists(f.string() + ".partial"));
}

TEST(CliExtract, Dtype) {
  const fs::path h = extract_ok(extract_args("--dtype fp16"), "dtype16.safetensors");
  const fs::path b = extract_ok(extract_args("--dtype bf16"), "dtypebf16.safetensors");
  const fs::path s = extract_ok(extract_args("--dtype fp32"), "dtype32.safetensors");
  EXPECT_EQ(FeatureFile::open(h).feature("t50.b2").dtype(), DType::F16);
  EXPECT_EQ(FeatureFile::open(b).feature("t50.b2").dtype(), DType::BF16);
  EXPECT_EQ(FeatureFile::open(s).feature("t50.b2").dtype(), DType::F32);
  EXPECT_EQ(FeatureFile::open(h).labels()->dtype(), DType::I64);
  EXPECT_EQ(read_text(s), read_text(base()));
  const auto ref = values(base());
  EXPECT_LT(rel_err(values(h), ref), 1e-3);
  EXPECT_LT(rel_err(values(b), ref), 1e-2);
  EXPECT_NE(values(b), ref);
  EXPECT_LT(fs::file_size(h), fs::file_size(s));
  expect_refused(extract_args("--dtype f8 --out " + q(work() / "x.safetensors")), {"f8"});
}

// =============================================================================================
// probe
// =============================================================================================

TEST(CliProbe, TrainTestAndFeature) {
  const Result r = probe_ok("--epochs 1");
  EXPECT_TRUE(has(r.out, "head linear  feature t50.b4  train 64  test 32  top-1 ")) << r.out;
  // The files swapped: the sizes follow.
  const auto& f = probe_files();
  const Result s = run("probe --train " + q(f.test) + " --test " + q(f.train) +
                       " --feature t50.b3 --epochs 1 --threads 2");
  ASSERT_EQ(s.code, 0) << s.out;
  EXPECT_TRUE(has(s.out, "feature t50.b3  train 32  test 64")) << s.out;
  expect_refused(probe_args("--feature t90.b3 --epochs 1"), {"t50.b3", "t50.b4"});
  expect_refused(probe_args("--feature t50.b3,t50.b4 --epochs 1"), {"fusion"});
  expect_refused("probe --train " + q(f.train) + " --test " + q(work() / "nonexistent_test.safetensors") +
                     " --feature t50.b4 --epochs 1",
                 {"nonexistent_test.safetensors"});
  // A test file without labels.
  const fs::path nol = extract_ok("extract --weights " + q(kModel) + " --input " + kTestImages +
                                      " --t 50 --blocks 4 --pool avg:2 --threads 2 --limit 4",
                                  "probe_nolabels.safetensors");
  expect_refused("probe --train " + q(f.train) + " --test " + q(nol) + " --feature t50.b4 --epochs 1",
                 {"labels"});
}

TEST(CliProbe, Heads) {
  struct Case {
    std::string flags, name, params;
  };
  // 128 features (32 x 2 x 2), 10 classes.
  const std::vector<Case> cases = {
      {"--head linear --epochs 2", "linear", "(1290 parameters)"},
      {"--head mlp:32_16 --epochs 2", "mlp:32_16", "(4826 parameters)"},
      {"--head cnn --epochs 1", "cnn", ""},
      {"--head attention --attention-dim 32 --epochs 2", "attention", ""},
      {"--head fusion --attention-dim 32 --epochs 2 --feature t50.b3,t50.b4", "fusion", ""},
  };
  for (const auto& c : cases) {
    const Result r = probe_ok(c.flags);
    EXPECT_TRUE(has(r.out, "training a " + c.name + " head " + c.params)) << c.flags << "\n" << r.out;
    EXPECT_TRUE(has(r.out, "head " + c.name + "  feature ")) << r.out;
    const double top1 = top1_of(r.out);
    EXPECT_GE(top1, 0) << r.out;
    EXPECT_LE(top1, 100) << r.out;
  }
  expect_refused(probe_args("--head foo --epochs 1"), {"unknown head 'foo'"});
  expect_refused(probe_args("--head mlp --epochs 1"), {"mlp needs hidden sizes"});
  expect_refused(probe_args("--head mlp:x_y --epochs 1"), {"'x'"});
}

TEST(CliProbe, AttentionDim) {
  std::smatch m;
  const Result a = probe_ok("--head attention --attention-dim 32 --epochs 1");
  const Result b = probe_ok("--head attention --attention-dim 64 --epochs 1");
  const std::regex re(R"(training a attention head \((\d+) parameters\))");
  ASSERT_TRUE(std::regex_search(a.out, m, re)) << a.out;
  const long pa = std::stol(m[1]);
  ASSERT_TRUE(std::regex_search(b.out, m, re)) << b.out;
  const long pb = std::stol(m[1]);
  EXPECT_GT(pb, pa) << "a wider attention head has more parameters";
  expect_refused(probe_args("--head attention --attention-dim 30 --epochs 1"), {"attention dim 30"});
}

TEST(CliProbe, EpochsAndJson) {
  const fs::path json = work() / "result.json";
  fs::remove(json);
  const Result r = probe_ok("--epochs 3 --json " + q(json));
  ASSERT_TRUE(fs::exists(json));
  const std::string j = read_text(json);
  EXPECT_EQ(j.front(), '{') << j;
  EXPECT_EQ(json_field(j, "head"), "\"linear\"") << j;
  EXPECT_EQ(json_field(j, "feature"), "\"t50.b4\"") << j;
  EXPECT_EQ(json_field(j, "train"), "64") << j;
  EXPECT_EQ(json_field(j, "test"), "32") << j;
  EXPECT_EQ(json_field(j, "epochs"), "3") << j;
  EXPECT_EQ(count_of(r.out, "\nepoch "), 3) << r.out;
  const double top1 = std::stod(json_field(j, "top1")), top5 = std::stod(json_field(j, "top5"));
  EXPECT_NEAR(100 * top1, top1_of(r.out), 0.01) << j << r.out;
  EXPECT_GE(top5, top1);
  EXPECT_LE(top5, 1.0);
  fs::remove(json);
  probe_ok("--epochs 5 --json " + q(json));
  EXPECT_EQ(json_field(read_text(json), "epochs"), "5");
  expect_refused(probe_args("--epochs 0"), {"epochs must be >= 1"});
  expect_refused(probe_args("--epochs x"), {"--epochs"});
  expect_refused(probe_args("--epochs 1 --json " + q(not_a_folder() / "r.json")), {"not_a_folder/r.json"});
}

TEST(CliProbe, ValidationAndEarlyStopping) {
  // A validation split shows up in every epoch line.
  Result r = probe_ok("--epochs 2 --val-fraction 0.25");
  EXPECT_EQ(count_of(r.out, "val acc"), 2) << r.out;
  r = probe_ok("--epochs 2");
  EXPECT_EQ(count_of(r.out, "val acc"), 0) << r.out;
  // With an lr too small to move any weight, validation never improves after the first epoch:
  // patience 1 stops after epoch 2, patience 3 after epoch 4, of 20.
  const fs::path json = work() / "early.json";
  for (const auto& [patience, epochs] : {std::pair{1, "2"}, std::pair{3, "4"}}) {
    fs::remove(json);
    r = probe_ok("--epochs 20 --val-fraction 0.25 --lr 1e-30 --schedule constant --patience " +
                 std::to_string(patience) + " --json " + q(json));
    EXPECT_EQ(json_field(read_text(json), "epochs"), epochs) << r.out;
  }
  expect_refused(probe_args("--epochs 2 --patience 2"), {"needs val_fraction"});
  expect_refused(probe_args("--epochs 2 --val-fraction 0.25 --patience -1"), {"patience must be >= 0"});
  expect_refused(probe_args("--epochs 2 --val-fraction 1.5"), {"val_fraction"});
  expect_refused(probe_args("--epochs 2 --val-fraction -0.1"), {"val_fraction"});
}

TEST(CliProbe, LrAndSchedule) {
  // --epochs 4: the step schedule divides lr by 10 every epoch (a quarter of training).
  auto lrs = [](const std::string& flags) { return epoch_lrs(probe_ok("--epochs 4 " + flags).out); };
  const auto step = lrs("--lr 0.02 --schedule step");
  const auto dflt = lrs("--lr 0.02");
  const auto constant = lrs("--lr 0.02 --schedule constant");
  const auto cosine = lrs("--lr 0.02 --schedule cosine");
  ASSERT_EQ(step.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(step[static_cast<std::size_t>(i)], 0.02 * std::pow(0.1, i), 1e-9);
  EXPECT_EQ(dflt, step) << "step is the default";
  EXPECT_EQ(constant, std::vector<double>(4, 0.02));
  ASSERT_EQ(cosine.size(), 4u);
  EXPECT_NEAR(cosine[0], 0.02, 1e-9);
  for (std::size_t i = 1; i < 4; ++i) {
    EXPECT_LT(cosine[i], cosine[i - 1]);
    EXPECT_GT(cosine[i], step[i]) << "cosine decays more slowly than x0.1 per epoch";
  }
  // The default lr: 1e-2 for linear heads, 5e-2 for attention.
  EXPECT_NEAR(epoch_lrs(probe_ok("--epochs 1").out).at(0), 1e-2, 1e-12);
  EXPECT_NEAR(epoch_lrs(probe_ok("--epochs 1 --head attention --attention-dim 32").out).at(0), 5e-2, 1e-12);
  // Another lr trains other weights.
  EXPECT_NE(trained("--lr 0.02", "lr_a"), trained("--lr 0.05", "lr_b"));
  expect_refused(probe_args("--lr 0"), {"lr must be > 0"});
  expect_refused(probe_args("--lr -1"), {"lr must be > 0"});
  expect_refused(probe_args("--schedule foo"), {"--schedule", "foo"});
}

TEST(CliProbe, OptimizerMomentumWeightDecayBatch) {
  const auto ref = trained("", "opt_ref");
  ASSERT_FALSE(ref.empty());
  EXPECT_EQ(trained("--optimizer sgd", "opt_sgd"), ref) << "sgd is the default";
  EXPECT_NE(trained("--optimizer adamw --lr 1e-3", "opt_adamw"), ref);
  EXPECT_EQ(trained("--momentum 0", "mom0"), ref) << "momentum 0 is the default";
  EXPECT_NE(trained("--momentum 0.9", "mom9"), ref);
  EXPECT_EQ(trained("--weight-decay 0", "wd0"), ref) << "weight decay 0 is the default";
  EXPECT_NE(trained("--weight-decay 0.5", "wd5"), ref);
  EXPECT_EQ(trained("--batch 128", "batch128"), ref) << "batch 128 is the default";
  EXPECT_NE(trained("--batch 16", "batch16"), ref);
  expect_refused(probe_args("--optimizer foo"), {"--optimizer", "foo"});
  expect_refused(probe_args("--momentum 1"), {"momentum"});
  expect_refused(probe_args("--momentum -0.5"), {"momentum"});
  expect_refused(probe_args("--weight-decay -1"), {"weight_decay"});
  expect_refused(probe_args("--batch 0"), {"batch_size"});
}

TEST(CliProbe, Standardize) {
  const fs::path a = work() / "std.safetensors", b = work() / "nostd.safetensors";
  probe_ok("--epochs 2 --standardize --save " + q(a));
  probe_ok("--epochs 2 --save " + q(b));
  const auto wa = head_weights(a), wb = head_weights(b);
  EXPECT_TRUE(wa.count("standardize.0.mean") && wa.count("standardize.0.std")) << "standardisation is saved";
  EXPECT_FALSE(wb.count("standardize.0.mean"));
  ASSERT_TRUE(wa.count("standardize.0.mean"));
  // The mean is the training features' mean.
  const FeatureFile tr = FeatureFile::open(probe_files().train);
  const auto x = tr.feature("t50.b4").to_vector();
  const auto& mean = wa.at("standardize.0.mean");
  ASSERT_EQ(mean.size(), 128u);
  double worst = 0;
  for (std::size_t j = 0; j < 128; ++j) {
    double s = 0;
    for (std::size_t i = 0; i < 64; ++i) s += x[i * 128 + j];
    worst = std::max(worst, std::abs(s / 64 - mean[j]));
  }
  EXPECT_LT(worst, 1e-4);
}

TEST(CliProbe, Seed) {
  const Result a = probe_ok("--epochs 2 --seed 5");
  const Result b = probe_ok("--epochs 2 --seed 5");
  EXPECT_EQ(a.out, b.out) << "the same seed, the same training";
  EXPECT_EQ(trained("--seed 5", "seed5a"), trained("--seed 5", "seed5b"));
  EXPECT_NE(trained("--seed 5", "seed5c"), trained("--seed 6", "seed6"));
  EXPECT_EQ(trained("--seed 0", "seed0"), trained("", "seed_default")) << "seed 0 is the default";
  expect_refused(probe_args("--seed x"), {"--seed"});
}

TEST(CliProbe, Threads) {
  const Result a = probe_ok("--epochs 2 --threads 1");
  const Result b = probe_ok("--epochs 2 --threads 2");
  EXPECT_NEAR(top1_of(a.out), top1_of(b.out), 1e-9) << a.out << b.out;
  const auto wa = trained("--threads 1", "thr1"), wb = trained("--threads 2", "thr2");
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [name, v] : wa) EXPECT_LT(rel_err(v, wb.at(name)), 1e-4) << name;
  expect_refused(probe_args("--threads x"), {"--threads"});
}

TEST(CliProbe, SaveWritesALoadableHead) {
  const fs::path p = work() / "head.safetensors", json = work() / "head.json";
  fs::remove(p);
  const Result r = probe_ok("--epochs 2 --head mlp:32_16 --save " + q(p) + " --json " + q(json));
  ASSERT_TRUE(fs::exists(p)) << r.out;
  EXPECT_TRUE(has(r.out, "saved the head to")) << r.out;
  const io::NamedTensors raw = io::load_safetensors(p);  // a plain safetensors file
  EXPECT_FALSE(raw.empty());
  const Head h = Head::load(p);
  EXPECT_EQ(h.spec().kind, HeadKind::MLP);
  EXPECT_EQ(h.num_classes(), 10);
  EXPECT_EQ(h.num_parameters(), 4826);
  EXPECT_EQ(h.metadata().at("feature"), "t50.b4");
  EXPECT_EQ(h.metadata().at("pooling"), "avg:2");
  // It classifies the test features as the run reported.
  const FeatureFile te = FeatureFile::open(probe_files().test);
  const Report rep = h.evaluate(te.feature("t50.b4"), *te.labels());
  EXPECT_NEAR(rep.top1, std::stod(json_field(read_text(json), "top1")), 1e-6);
  expect_refused(probe_args("--epochs 1 --save " + q(not_a_folder() / "h.safetensors")),
                 {"not_a_folder/h.safetensors"});
}

TEST(CliProbe, Confusion) {
  const Result r = probe_ok("--epochs 2 --confusion");
  const auto at = r.out.find("confusion (rows: true class, columns: predicted)\n");
  ASSERT_NE(at, std::string::npos) << r.out;
  std::istringstream in(r.out.substr(at));
  std::string header;
  std::getline(in, header);
  std::int64_t total = 0, diagonal = 0;
  for (int i = 0; i < 10; ++i) {
    std::string line;
    ASSERT_TRUE(std::getline(in, line)) << r.out;
    std::istringstream row(line);
    std::vector<std::int64_t> v;
    for (std::int64_t x; row >> x;) v.push_back(x);
    ASSERT_EQ(v.size(), 10u) << "row " << i << ": " << line;
    for (int j = 0; j < 10; ++j) {
      total += v[static_cast<std::size_t>(j)];
      if (i == j) diagonal += v[static_cast<std::size_t>(j)];
    }
  }
  EXPECT_EQ(total, 32);
  EXPECT_NEAR(100.0 * static_cast<double>(diagonal) / 32, top1_of(r.out), 0.01);
  EXPECT_FALSE(has(probe_ok("--epochs 1").out, "confusion")) << "no matrix without --confusion";
}

// =============================================================================================
// A flag given twice: the last one wins.
// =============================================================================================

TEST(CliFlags, TheLastOfARepeatedFlagWins) {
  const fs::path f = extract_ok(extract_args("--limit 5 --pool max:2 --pool gap", 3), "twice.safetensors");
  EXPECT_EQ(FeatureFile::open(f).size(), 5);
  EXPECT_EQ(FeatureFile::open(f).metadata().pooling, "gap");

  const fs::path json = work() / "twice.json";
  fs::remove(json);
  probe_ok("--epochs 5 --epochs 2 --head cnn --head linear --json " + q(json));
  EXPECT_EQ(json_field(read_text(json), "epochs"), "2");
  EXPECT_EQ(json_field(read_text(json), "head"), "\"linear\"");

  const Result r = run("info --preset 256x256_diffusion_uncond --preset fmnist_default");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "parameters: 2005441")) << r.out;

  const fs::path c = work() / "twice_w.safetensors";
  ASSERT_EQ(run("convert --weights " + q(kModel) + " --out " + q(work() / "first.safetensors") + " --out " +
                q(c) + " --dtype fp16 --dtype bf16")
                .code,
            0);
  EXPECT_FALSE(fs::exists(work() / "first.safetensors"));
  EXPECT_EQ(io::load_safetensors(c).at("out.2.weight").dtype(), DType::BF16);
}

// =============================================================================================
// Bad values accepted today: each runs as if the flag were not given (a value <= 0 means
// "default" inside). These tests expect the documented rule -- a bad value fails with a message
// naming the flag -- and fail until the CLI checks them.
// =============================================================================================

TEST(CliBadValues, ExtractNegativeChunk) {
  expect_refused(extract_args("--chunk -1 --out " + q(work() / "x.safetensors")), {"--chunk"});
}

TEST(CliBadValues, ImageSizeBelowOne) {
  expect_refused(extract_args("--image-size -3 --out " + q(work() / "x.safetensors")), {"--image-size"});
  expect_refused(extract_args("--image-size 0 --out " + q(work() / "x.safetensors")), {"--image-size"});
  expect_refused("info --preset fmnist_default --image-size -1", {"--image-size"});
}

TEST(CliBadValues, ProbeNegativeAttentionDim) {
  expect_refused(probe_args("--epochs 1 --head attention --attention-dim -5"), {"--attention-dim"});
}

TEST(CliBadValues, ProbeNegativeThreads) {
  // Refused while parsing, like extract --threads -1 ("--threads: must be >= 0, got -1").
  expect_refused(probe_args("--epochs 1 --threads -1"), {"--threads"});
}
