// Feature files: SHA-256 (standard test vectors), names, safetensors round trips with metadata,
// reading by Python/NumPy, .npy export, resumable writing (interrupted runs give the same bytes
// as uninterrupted ones), and errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/npy_dataset.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/features/feature_rows.hpp"
#include "diffprobe/io/npy.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/model/unet.hpp"
#include "diffprobe/version.hpp"
#include "features/sha256.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("diffprobe_test_feature_file_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string sha(const std::string& s) {
  detail::Sha256 h;
  h.update(s);
  return h.hex();
}

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

Tensor random_tensor(const Shape& s, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_vector(s, v);
}

Tensor labels_of(std::int64_t n, std::int64_t offset = 0) {
  Tensor t = Tensor::empty({n}, DType::I64);
  for (std::int64_t i = 0; i < n; ++i) t.data<std::int64_t>()[i] = (i + offset) % 7;
  return t;
}

FeatureMetadata sample_metadata() {
  FeatureMetadata m;
  m.weights_sha256 = sha("weights");
  m.config_json = R"({"image_size": 32, "num_channels": 64})";
  m.timesteps = {90, 150};
  m.blocks = {19, 24};
  m.pooling = "avg:2";
  m.noise_seed = 18446744073709551615ull;  // the full u64 range survives the string round trip
  m.noise_draws = 2;
  m.preprocessing = "IDX fashion: uint8 v/127.5-1; pad 2 px";
  m.extra["note"] = "hello \"world\"";
  return m;
}

// N samples: t90.b19 [N, 8, 2, 2], t150.b24 [N, 5]; the features of sample i do not depend on
// how samples are chunked.
FeatureSet sample_features(std::int64_t begin, std::int64_t end) {
  const std::int64_t n = end - begin;
  Tensor a = Tensor::empty({n, 8, 2, 2}), b = Tensor::empty({n, 5});
  for (std::int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 32; ++k)
      a.data<float>()[i * 32 + k] = static_cast<float>((begin + i) * 100 + k) * 0.5f;
    for (int k = 0; k < 5; ++k) b.data<float>()[i * 5 + k] = -static_cast<float>((begin + i) * 10 + k) / 3.0f;
  }
  FeatureSet s;
  s.set(90, 19, a);
  s.set(150, 24, b);
  return s;
}

}  // namespace

TEST(Sha256, StandardTestVectors) {
  // FIPS 180-4 / NIST examples.
  EXPECT_EQ(sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmno"
                "pqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(sha(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Every split of the input into two updates gives the one-shot digest (buffer boundaries).
  std::string text;
  for (int i = 0; i < 200; ++i) text += static_cast<char>('A' + i % 53);
  const std::string whole = sha(text);
  for (std::size_t cut = 0; cut <= text.size(); cut += 7) {
    detail::Sha256 h;
    h.update(text.substr(0, cut));
    h.update(text.substr(cut));
    ASSERT_EQ(h.hex(), whole) << cut;
  }
}

TEST(Sha256, FileDigestMatchesCoreutils) {
  const fs::path d = temp_dir("sha");
  std::string content(300000, '\0');
  std::mt19937 rng(1);
  for (auto& c : content) c = static_cast<char>(rng());
  std::ofstream(d / "w.bin", std::ios::binary) << content;
  EXPECT_EQ(file_sha256(d / "w.bin"), sha(content));
  const std::string cmd = "sha256sum " + (d / "w.bin").string() + " > " + (d / "sum.txt").string();
  if (std::system(cmd.c_str()) == 0) {
    std::string digest;
    std::ifstream(d / "sum.txt") >> digest;
    EXPECT_EQ(file_sha256(d / "w.bin"), digest);
  }
  EXPECT_THROW(file_sha256(d / "missing"), IoError);
  EXPECT_THROW(file_sha256(d), IoError);
  fs::remove_all(d);
}

TEST(FeatureFile, Names) {
  EXPECT_EQ(feature_name(90, 24), "t90.b24");
  EXPECT_EQ(parse_feature_name("t90.b24"), (std::pair{90, 24}));
  EXPECT_EQ(parse_feature_name("t0.b0"), (std::pair{0, 0}));
  for (const char* bad : {"t90", "x90.b24", "t.b1", "t-1.b2", "t90.b24x", "t90.c24", "", "t9.b"})
    EXPECT_THROW(parse_feature_name(bad), ArgumentError) << bad;
}

TEST(FeatureFile, RoundTripWithMetadataAndLabels) {
  const fs::path d = temp_dir("roundtrip");
  const FeatureSet f = sample_features(0, 6);
  const FeatureMetadata meta = sample_metadata();
  save_features(d / "f.safetensors", f, labels_of(6), meta);
  const FeatureFile file = FeatureFile::open(d / "f.safetensors");
  EXPECT_EQ(file.size(), 6);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"t90.b19", "t150.b24"}));  // by (t, block)
  EXPECT_EQ(file.feature("t90.b19").shape(), (Shape{6, 8, 2, 2}));
  EXPECT_EQ(file.feature(90, 19).to_vector(), f.at(90, 19).to_vector());
  EXPECT_EQ(file.feature("t150.b24").to_vector(), f.at(150, 24).to_vector());
  EXPECT_EQ(file.features().at(150, 24).to_vector(), f.at(150, 24).to_vector());
  ASSERT_TRUE(file.labels().has_value());
  EXPECT_EQ(file.labels()->dtype(), DType::I64);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(file.labels()->data<std::int64_t>()[i], i % 7);
  FeatureMetadata expect = meta;
  expect.library = std::string("diffprobe ") + version();
  EXPECT_EQ(file.metadata(), expect);
  // Without labels, stored as f16.
  save_features(d / "h.safetensors", f, std::nullopt, meta, DType::F16);
  const FeatureFile h = FeatureFile::open(d / "h.safetensors");
  EXPECT_FALSE(h.labels().has_value());
  EXPECT_EQ(h.feature("t90.b19").dtype(), DType::F16);
  const auto a = h.feature("t90.b19").to_vector(), b = f.at(90, 19).to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], std::abs(b[i]) * 1e-3 + 1e-3);
  // From named tensors (order of insertion does not matter: the file is canonical).
  io::NamedTensors named;
  named.set("labels", labels_of(6));
  named.set("t150.b24", f.at(150, 24));
  named.set("t90.b19", f.at(90, 19));
  save_features(d / "n.safetensors", named, meta);
  EXPECT_EQ(read_bytes(d / "n.safetensors"), read_bytes(d / "f.safetensors"));
  // The file is plain safetensors to any reader.
  const io::NamedTensors raw = io::load_safetensors(d / "f.safetensors");
  EXPECT_EQ(raw.metadata.at("format"), "diffprobe.features");
  EXPECT_EQ(raw.metadata.at("timesteps"), "90,150");
  EXPECT_EQ(raw.metadata.at("noise_seed"), "18446744073709551615");
  fs::remove_all(d);
}

TEST(FeatureFile, PythonNumpyReadsTheFileAndTheNpyExport) {
  const fs::path d = temp_dir("python");
  const FeatureSet f = sample_features(0, 4);
  save_features(d / "f.safetensors", f, labels_of(4, 3), sample_metadata());
  FeatureFile::open(d / "f.safetensors").export_npy("t150.b24", d / "t150.npy");
  FeatureFile::open(d / "f.safetensors").export_npy("labels", d / "labels.npy");
  // The header is read with json, the data with numpy.frombuffer: no safetensors package.
  std::ofstream(d / "read.py") << R"PY(
import json, struct, sys
import numpy as np
path, npy, lab, out = sys.argv[1:5]
with open(path, "rb") as f:
    raw = f.read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]
meta = header.pop("__metadata__")
lines = ["format " + meta["format"], "timesteps " + meta["timesteps"], "note " + meta["note"]]
kinds = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
for name in sorted(header):
    e = header[name]
    b, end = e["data_offsets"]
    a = np.frombuffer(data[b:end], dtype=kinds[e["dtype"]]).reshape(e["shape"])
    lines.append("%s %s %s %.6f" % (name, e["dtype"], "x".join(map(str, a.shape)), float(a.astype(np.float64).sum())))
x = np.load(npy)
lines.append("npy %s %s %.6f" % (x.dtype, "x".join(map(str, x.shape)), float(x.astype(np.float64).sum())))
y = np.load(lab)
lines.append("labels_npy %s %s" % (y.dtype, ",".join(map(str, y.tolist()))))
open(out, "w").write("\n".join(lines) + "\n")
)PY";
  const std::string cmd = "/usr/bin/python3 " + (d / "read.py").string() + " " +
                          (d / "f.safetensors").string() + " " + (d / "t150.npy").string() + " " +
                          (d / "labels.npy").string() + " " + (d / "out.txt").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "python3 with numpy is needed (scripts/setup.sh)";
  std::ifstream in(d / "out.txt");
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  auto sum = [](const Tensor& t) {
    double s = 0;
    for (const float v : t.to_vector()) s += v;
    return s;
  };
  char buf[256];
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_EQ(lines[0], "format diffprobe.features");
  EXPECT_EQ(lines[1], "timesteps 90,150");
  EXPECT_EQ(lines[2], "note hello \"world\"");
  EXPECT_EQ(lines[3], "labels I64 4 18.000000");  // (i + 3) % 7 for i < 4: 3 + 4 + 5 + 6
  std::snprintf(buf, sizeof buf, "t150.b24 F32 4x5 %.6f", sum(f.at(150, 24)));
  EXPECT_EQ(lines[4], buf);
  std::snprintf(buf, sizeof buf, "t90.b19 F32 4x8x2x2 %.6f", sum(f.at(90, 19)));
  EXPECT_EQ(lines[5], buf);
  std::snprintf(buf, sizeof buf, "npy float32 4x5 %.6f", sum(f.at(150, 24)));
  EXPECT_EQ(lines[6], buf);
  EXPECT_EQ(lines[7], "labels_npy int64 3,4,5,6");
  fs::remove_all(d);
}

TEST(FeatureFile, Errors) {
  const fs::path d = temp_dir("errors");
  const FeatureSet f = sample_features(0, 3);
  const FeatureMetadata meta = sample_metadata();
  save_features(d / "f.safetensors", f, labels_of(3), meta);
  const FeatureFile file = FeatureFile::open(d / "f.safetensors");
  // A missing name lists what there is.
  try {
    file.feature("t90.b24");
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("t90.b19"), std::string::npos) << m;
    EXPECT_NE(m.find("t150.b24"), std::string::npos) << m;
  }
  EXPECT_THROW(file.export_npy("nope", d / "x.npy"), ArgumentError);
  EXPECT_THROW(FeatureFile::open(d / "missing.safetensors"), IoError);

  // Truncated: every cut of the file is refused.
  const auto bytes = read_bytes(d / "f.safetensors");
  for (const std::size_t cut :
       {std::size_t{0}, std::size_t{5}, std::size_t{40}, bytes.size() / 2, bytes.size() - 1}) {
    std::ofstream(d / "cut.safetensors", std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(cut));
    EXPECT_THROW(FeatureFile::open(d / "cut.safetensors"), FormatError) << cut;
  }
  // Plain safetensors (e.g. weights): no format marker.
  io::NamedTensors weights;
  weights.set("t90.b19", f.at(90, 19));
  io::save_safetensors(d / "w.safetensors", weights);
  EXPECT_THROW(FeatureFile::open(d / "w.safetensors"), FormatError);
  // Marker present, but a foreign tensor / inconsistent N / a (t, b) outside the metadata lists.
  io::NamedTensors bad;
  bad.metadata = meta.to_strings();
  bad.set("t90.b19", f.at(90, 19));
  bad.set("weights", f.at(90, 19));
  io::save_safetensors(d / "b1.safetensors", bad);
  EXPECT_THROW(FeatureFile::open(d / "b1.safetensors"), FormatError);
  bad.erase("weights");
  bad.set("t150.b24", sample_features(0, 4).at(150, 24));
  io::save_safetensors(d / "b2.safetensors", bad);
  EXPECT_THROW(FeatureFile::open(d / "b2.safetensors"), FormatError);
  bad.erase("t150.b24");
  bad.set("t10.b19", f.at(90, 19));
  io::save_safetensors(d / "b3.safetensors", bad);
  EXPECT_THROW(FeatureFile::open(d / "b3.safetensors"), FormatError);
  bad.erase("t10.b19");
  bad.metadata["timesteps"] = "90,x";
  io::save_safetensors(d / "b4.safetensors", bad);
  EXPECT_THROW(FeatureFile::open(d / "b4.safetensors"), FormatError);
  bad.metadata["timesteps"] = "90";
  bad.metadata["format_version"] = "7";
  io::save_safetensors(d / "b5.safetensors", bad);
  EXPECT_THROW(FeatureFile::open(d / "b5.safetensors"), FormatError);

  // Writing: inconsistent N, bad labels, integer features, nothing to write, clashing metadata.
  FeatureSet mixed = f;
  mixed.set(150, 24, sample_features(0, 2).at(150, 24));
  EXPECT_THROW(save_features(d / "x.safetensors", mixed, std::nullopt, meta), ShapeError);
  EXPECT_THROW(save_features(d / "x.safetensors", f, labels_of(2), meta), ShapeError);
  EXPECT_THROW(save_features(d / "x.safetensors", f, f.at(90, 19), meta), DTypeError);
  FeatureSet ints;
  ints.set(90, 19, labels_of(3));
  EXPECT_THROW(save_features(d / "x.safetensors", ints, std::nullopt, meta), DTypeError);
  EXPECT_THROW(save_features(d / "x.safetensors", FeatureSet{}, std::nullopt, meta), ArgumentError);
  FeatureMetadata clash = meta;
  clash.extra["blocks"] = "1";
  EXPECT_THROW(save_features(d / "x.safetensors", f, std::nullopt, clash), ArgumentError);
  EXPECT_THROW(save_features(d / "x.safetensors", f, std::nullopt, meta, DType::I32), ArgumentError);
  io::NamedTensors odd;
  odd.set("features", f.at(90, 19));
  EXPECT_THROW(save_features(d / "x.safetensors", odd, meta), ArgumentError);
  EXPECT_FALSE(fs::exists(d / "x.safetensors"));
  fs::remove_all(d);
}

TEST(FeatureWriter, UninterruptedRunEqualsSaveFeatures) {
  const fs::path d = temp_dir("writer");
  const FeatureMetadata meta = sample_metadata();
  save_features(d / "ref.safetensors", sample_features(0, 10), labels_of(10), meta);
  FeatureWriter w(d / "out.safetensors", meta, {.total = 10, .chunk_size = 3});
  EXPECT_EQ(w.num_chunks(), 4);
  EXPECT_EQ(w.chunk_range(3), (std::pair<std::int64_t, std::int64_t>{9, 10}));
  EXPECT_TRUE(fs::is_directory(w.partial_dir()));
  for (const std::int64_t c : w.pending()) {
    const auto [b, e] = w.chunk_range(c);
    Tensor lab = Tensor::empty({e - b}, DType::I64);
    for (std::int64_t i = b; i < e; ++i) lab.data<std::int64_t>()[i - b] = i % 7;
    w.write(c, sample_features(b, e), lab);
  }
  EXPECT_EQ(w.num_done(), 4);
  w.finish();
  EXPECT_FALSE(fs::exists(w.partial_dir()));
  EXPECT_EQ(read_bytes(d / "out.safetensors"), read_bytes(d / "ref.safetensors"));
  fs::remove_all(d);
}

TEST(FeatureWriter, ResumedRunIsIdenticalToUninterrupted) {
  const fs::path d = temp_dir("resume");
  const FeatureMetadata meta = sample_metadata();
  const FeatureWriterOptions opt{.total = 11, .chunk_size = 2, .labels = true, .store = DType::F16};
  save_features(d / "ref.safetensors", sample_features(0, 11), labels_of(11), meta, DType::F16);
  auto write_chunk = [](FeatureWriter& w, std::int64_t c) {
    const auto [b, e] = w.chunk_range(c);
    Tensor lab = Tensor::empty({e - b}, DType::I64);
    for (std::int64_t i = b; i < e; ++i) lab.data<std::int64_t>()[i - b] = i % 7;
    w.write(c, sample_features(b, e), lab);
  };
  {
    // The first run finishes chunks 0, 1 and 4, then "dies": the writer goes away without
    // finish(), leaving a half-written temporary file and a chunk file whose progress was never
    // recorded (killed between the two), as a real kill could.
    FeatureWriter w(d / "out.safetensors", meta, opt);
    for (const std::int64_t c : {0, 1, 4}) write_chunk(w, c);
    std::ofstream(w.partial_dir() / "c000005.t90.b19.npy.tmp.999.0") << "half";
    std::ofstream(w.partial_dir() / "c000005.t90.b19.npy") << "garbage from a killed write";
  }
  EXPECT_FALSE(fs::exists(d / "out.safetensors"));
  {
    FeatureWriter w(d / "out.safetensors", meta, opt);
    EXPECT_EQ(w.num_done(), 3);
    EXPECT_TRUE(w.done(4));
    EXPECT_FALSE(w.done(5));
    EXPECT_EQ(w.pending(), (std::vector<std::int64_t>{2, 3, 5}));
    EXPECT_THROW(w.finish(), ArgumentError);  // chunks missing
    write_chunk(w, 2);
  }
  {
    // Another interruption, then the rest.
    FeatureWriter w(d / "out.safetensors", meta, opt);
    EXPECT_EQ(w.pending(), (std::vector<std::int64_t>{3, 5}));
    for (const std::int64_t c : w.pending()) write_chunk(w, c);
    w.finish();
  }
  EXPECT_EQ(read_bytes(d / "out.safetensors"), read_bytes(d / "ref.safetensors"));
  const FeatureFile f = FeatureFile::open(d / "out.safetensors");
  EXPECT_EQ(f.size(), 11);
  EXPECT_EQ(f.feature("t90.b19").dtype(), DType::F16);
  fs::remove_all(d);
}

TEST(FeatureWriter, SkippedRowsSurviveResumeAndAreLeftOutByFeatureRows) {
  const fs::path d = temp_dir("skipped");
  const FeatureMetadata meta = sample_metadata();
  const FeatureWriterOptions opt{.total = 6, .chunk_size = 2, .labels = true};
  auto write_chunk = [](FeatureWriter& w, std::int64_t c, std::vector<SkippedRow> skipped) {
    const auto [b, e] = w.chunk_range(c);
    w.write(c, sample_features(b, e), labels_of(e - b, b), skipped);
  };
  {
    FeatureWriter w(d / "out.safetensors", meta, opt);
    write_chunk(w, 0, {{1, "a/b.png: truncated"}});
    write_chunk(w, 2, {});
    EXPECT_THROW(write_chunk(w, 2, {{1, "row 1 is not in chunk 2"}}), ArgumentError);
  }  // "killed"
  {
    FeatureWriter w(d / "out.safetensors", meta, opt);
    EXPECT_EQ(w.pending(), (std::vector<std::int64_t>{1}));
    write_chunk(w, 1, {{2, "c.jpg: empty"}, {3, "d.jpg: not an image"}});
    w.finish();
  }
  const FeatureFile f = FeatureFile::open(d / "out.safetensors");
  const auto& rows = f.metadata().skipped_rows;
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], (SkippedRow{1, "a/b.png: truncated"}));
  EXPECT_EQ(rows[2], (SkippedRow{3, "d.jpg: not an image"}));
  // Without skips the metadata has no such key: files of ordinary runs are unchanged.
  EXPECT_EQ(sample_metadata().to_strings().count("skipped_rows"), 0u);
  // FeatureRows leaves rows 1, 2, 3 out, with their labels.
  const FeatureRows r = FeatureRows::open({d / "out.safetensors"}, "t150.b24");
  EXPECT_EQ(r.rows(), 3);
  EXPECT_EQ(r.skipped_rows(), 3);
  EXPECT_EQ(*r.labels(), (std::vector<std::int64_t>{0, 4, 5}));
  std::vector<float> got(static_cast<std::size_t>(r.rows() * r.row_size()));
  r.read_range(0, r.rows(), got.data());
  const FeatureSet all = sample_features(0, 6);
  const std::vector<float> want_all = all.at(150, 24).to_vector();
  std::vector<float> want;
  for (const std::int64_t row : {0, 4, 5})
    want.insert(want.end(), want_all.begin() + row * 5, want_all.begin() + (row + 1) * 5);
  EXPECT_EQ(got, want);
  // The stored text, and its round trip.
  EXPECT_EQ(f.metadata().to_strings().at("skipped_rows"),
            R"({"rows":[{"error":"a/b.png: truncated","row":1},{"error":"c.jpg: empty","row":2},)"
            R"({"error":"d.jpg: not an image","row":3}]})");
  EXPECT_EQ(FeatureMetadata::from_strings(f.metadata().to_strings(), "test"), f.metadata());
  // A malformed list is refused when the metadata is read.
  auto bad = meta.to_strings();
  bad["skipped_rows"] = R"({"rows": [{"row": 3, "error": "x"}, {"row": 1, "error": "y"}]})";
  EXPECT_THROW(FeatureMetadata::from_strings(bad, "test"), FormatError);
  bad["skipped_rows"] = R"({"rows": [{"row": 1e300, "error": "x"}]})";
  EXPECT_THROW(FeatureMetadata::from_strings(bad, "test"), FormatError);
  // A row past the file's end is refused when the file is opened.
  FeatureMetadata past = meta;
  past.skipped_rows = {{6, "x"}};
  save_features(d / "past.safetensors", sample_features(0, 6), labels_of(6), past);
  EXPECT_THROW(FeatureFile::open(d / "past.safetensors"), FormatError);
  // Every row skipped: FeatureRows has none left.
  {
    FeatureWriter w(d / "all.safetensors", meta, {.total = 2, .chunk_size = 2, .labels = true});
    w.write(0, sample_features(0, 2), labels_of(2), {{0, "x"}, {1, "y"}});
    w.finish();
  }
  const FeatureRows none = FeatureRows::open({d / "all.safetensors"}, "t150.b24");
  EXPECT_EQ(none.rows(), 0);
  EXPECT_EQ(none.skipped_rows(), 2);
  EXPECT_TRUE(none.labels()->empty());
  fs::remove_all(d);
}

TEST(FeatureWriter, RefusesToMixRunsAndBadChunks) {
  const fs::path d = temp_dir("mix");
  const FeatureMetadata meta = sample_metadata();
  const FeatureWriterOptions opt{.total = 6, .chunk_size = 3, .labels = false};
  {
    FeatureWriter w(d / "o.safetensors", meta, opt);
    w.write(0, sample_features(0, 3));
    // Wrong rows, labels when off, other names, other per-sample shape, other dtype.
    EXPECT_THROW(w.write(1, sample_features(0, 2)), ShapeError);
    EXPECT_THROW(w.write(1, sample_features(3, 6), labels_of(3)), ArgumentError);
    FeatureSet other = sample_features(3, 6);
    other.set(10, 1, sample_features(3, 6).at(150, 24));
    EXPECT_THROW(w.write(1, other), ArgumentError);
    FeatureSet shaped;
    shaped.set(90, 19, random_tensor({3, 4, 2, 2}, 1));
    shaped.set(150, 24, random_tensor({3, 5}, 2));
    EXPECT_THROW(w.write(1, shaped), ShapeError);
    FeatureSet halves = sample_features(3, 6);
    halves.set(90, 19, halves.at(90, 19).to_dtype(DType::F16));
    EXPECT_THROW(w.write(1, halves), DTypeError);
    EXPECT_THROW(w.write(2, sample_features(0, 3)), ArgumentError);  // no chunk 2
    EXPECT_THROW(w.chunk_range(-1), ArgumentError);
    EXPECT_EQ(w.pending(), (std::vector<std::int64_t>{1}));
  }
  // Resuming with other settings or metadata is refused, naming the difference.
  FeatureMetadata changed = meta;
  changed.timesteps = {90};
  try {
    FeatureWriter w(d / "o.safetensors", changed, opt);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("timesteps"), std::string::npos) << e.what();
  }
  EXPECT_THROW(FeatureWriter(d / "o.safetensors", meta, {.total = 6, .chunk_size = 2, .labels = false}),
               ConfigError);
  EXPECT_THROW(FeatureWriter(d / "o.safetensors", meta, {.total = 7, .chunk_size = 3, .labels = false}),
               ConfigError);
  EXPECT_THROW(FeatureWriter(d / "o.safetensors", meta, {.total = 6, .chunk_size = 3, .labels = true}),
               ConfigError);
  // A chunk file lost after it was recorded: that chunk is pending again.
  fs::remove(d / "o.safetensors.partial" / "c000000.t150.b24.npy");
  {
    FeatureWriter w(d / "o.safetensors", meta, opt);
    EXPECT_EQ(w.pending(), (std::vector<std::int64_t>{0, 1}));
  }
  // A corrupt progress record.
  std::ofstream(d / "o.safetensors.partial" / "progress.json") << "{\"format\": ";
  EXPECT_THROW(FeatureWriter(d / "o.safetensors", meta, opt), FormatError);
  std::ofstream(d / "o.safetensors.partial" / "progress.json")
      << "{\"format\": \"diffprobe.features.partial\"}";
  EXPECT_THROW(FeatureWriter(d / "o.safetensors", meta, opt), FormatError);
  // Numbers that are not int64 integers (a float was cast with undefined behaviour).
  for (const char* total : {"1e300", "6.5", "18446744073709551615", "\"6\""}) {
    std::ofstream(d / "o.safetensors.partial" / "progress.json")
        << "{\"format\": \"diffprobe.features.partial\", \"total\": " << total << ", \"chunk_size\": 3}";
    EXPECT_THROW(FeatureWriter(d / "o.safetensors", meta, opt), FormatError) << total;
  }
  // Bad options.
  EXPECT_THROW(FeatureWriter(d / "p.safetensors", meta, {.total = 0}), ArgumentError);
  EXPECT_THROW(FeatureWriter(d / "p.safetensors", meta, {.total = 5, .chunk_size = 0}), ArgumentError);
  EXPECT_THROW(FeatureWriter(d / "p.safetensors", meta, {.total = 5, .store = DType::I64}), ArgumentError);
  FeatureMetadata clash = meta;
  clash.extra["format"] = "mine";
  EXPECT_THROW(FeatureWriter(d / "p.safetensors", clash, {.total = 5}), ArgumentError);
  fs::remove_all(d);
}

TEST(FeatureFile, MetadataDescribesAnExtraction) {
  const fs::path d = temp_dir("describe");
  const UNetConfig cfg = UNetConfig::from_json(
      R"({"image_size":16,"in_channels":3,"num_channels":32,"channel_mult":"1,2","num_res_blocks":1,)"
      R"("attention_resolutions":"8","num_heads":2,"use_scale_shift_norm":true,"resblock_updown":true})");
  const UNet model = UNet::random(cfg, 1);
  ExtractOptions o;
  o.timesteps = {5, 50};
  o.blocks = {1, 3};
  o.noise_seed = 77;
  o.noise_draws = 2;
  o.pool = PoolSpec{PoolKind::Average, 2};
  o.exec.threads = 2;
  const FeatureExtractor fx(model, o);
  std::ofstream(d / "w.bin") << "weights bytes";
  io::save_npy(d / "x.npy", random_tensor({2, 3, 16, 16}, 3));
  const data::NpyDataset ds(d / "x.npy");
  const FeatureMetadata m = FeatureMetadata::describe(fx, d / "w.bin", &ds);
  EXPECT_EQ(m.weights_sha256, sha("weights bytes"));
  EXPECT_EQ(UNetConfig::from_json(m.config_json).num_channels, 32);
  EXPECT_EQ(m.timesteps, (std::vector<int>{5, 50}));
  EXPECT_EQ(m.blocks, (std::vector<int>{1, 3}));
  EXPECT_EQ(m.pooling, o.pool->str());
  EXPECT_EQ(m.noise_seed, 77u);
  EXPECT_EQ(m.noise_draws, 2);
  EXPECT_EQ(m.preprocessing, ds.describe());
  EXPECT_EQ(m.extra.at("noise_mode"), "seeded");
  EXPECT_TRUE(FeatureMetadata::describe(fx).weights_sha256.empty());
  // Real features through a file.
  const FeatureSet feats = fx.extract(ds.images(0, 2), 0);
  save_features(d / "f.safetensors", feats, ds.labels(), m);
  const FeatureFile f = FeatureFile::open(d / "f.safetensors");
  EXPECT_EQ(f.metadata(), m);
  EXPECT_EQ(f.names().size(), 4u);
  EXPECT_EQ(f.feature(50, 3).shape(), fx.feature_shape(50, 3, 2));
  EXPECT_EQ(f.feature(50, 3).to_vector(), feats.at(50, 3).to_vector());
  fs::remove_all(d);
}
