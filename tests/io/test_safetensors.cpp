// safetensors: round trips (f32/f16/bf16 storage, layouts, metadata), a file written from the
// format description by Python, strict header validation, memory mapping.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "diffprobe/core/error.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "io/io_fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using namespace diffprobe;
using io::NamedTensors;
using iotest::TempDir;

Tensor ramp(const Shape& shape, double scale = 0.37, double shift = -1.0) {
  std::vector<float> v(static_cast<std::size_t>(shape.numel()));
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>(shift + scale * static_cast<double>(i));
  return Tensor::from_vector(shape, v);
}

Tensor int_tensor(const Shape& shape, DType dt) {
  Tensor t = Tensor::empty(shape, dt);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    if (dt == DType::I32)
      t.data<std::int32_t>()[i] = static_cast<std::int32_t>(i * 1000003 - 7);
    else
      t.data<std::int64_t>()[i] = (std::int64_t{1} << 40) * (i - 2);
  }
  return t;
}

// The header lists "__metadata__" first, then the tensors in the order of their data (not
// sorted by name), so a reader that walks the header meets the data in file order.
TEST(Safetensors, HeaderListsMetadataThenTensorsInDataOrder) {
  TempDir tmp;
  NamedTensors in;
  in.set("z.first", ramp({2, 3}));
  in.set("a.second", ramp({4}));
  in.set("m.third", int_tensor({3}, DType::I64));
  in.metadata["format"] = "pt";
  io::save_safetensors(tmp / "order.safetensors", in);
  std::ifstream f(tmp / "order.safetensors", std::ios::binary);
  std::uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  ASSERT_TRUE(f.good());
  ASSERT_EQ(n % 8, 0u);
  std::string text(static_cast<std::size_t>(n), '\0');
  f.read(text.data(), static_cast<std::streamsize>(n));
  ASSERT_TRUE(f.good());
  const auto header = nlohmann::ordered_json::parse(text);
  std::vector<std::string> keys;
  for (const auto& [k, v] : header.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"__metadata__", "z.first", "a.second", "m.third"}));
  EXPECT_EQ(header["z.first"]["data_offsets"], nlohmann::ordered_json::array({0, 24}));
  EXPECT_EQ(header["a.second"]["data_offsets"], nlohmann::ordered_json::array({24, 40}));
  EXPECT_EQ(header["m.third"]["dtype"], "I64");
  EXPECT_EQ(header["m.third"]["data_offsets"], nlohmann::ordered_json::array({40, 64}));
}

TEST(Safetensors, RoundTripKeepsNamesOrderValuesAndMetadata) {
  TempDir tmp;
  NamedTensors in;
  in.set("z.first", ramp({2, 3, 4, 5}));
  in.set("a.second", ramp({7}, 1e-3, 3.0).to_dtype(DType::F16));
  in.set("m.bf16", ramp({3, 2}, 0.5).to_dtype(DType::BF16));
  in.set("ids32", int_tensor({5}, DType::I32));
  in.set("ids64", int_tensor({2, 2}, DType::I64));
  in.set("scalar", ramp({}, 0, 4.25));
  in.set("empty", Tensor::empty({0, 3}));
  in.metadata["format"] = "pt";
  in.metadata["note"] = "quotes \" and \\ backslashes";
  io::save_safetensors(tmp / "rt.safetensors", in);
  const NamedTensors out = io::load_safetensors(tmp / "rt.safetensors");
  EXPECT_EQ(out.names(), in.names());
  EXPECT_EQ(out.metadata, in.metadata);
  for (const auto& [name, t] : in) {
    const Tensor& o = out.at(name);
    // Floats are stored as f32 by default: the half/bf16 inputs widen exactly.
    const DType want = is_floating(t.dtype()) ? DType::F32 : t.dtype();
    const Tensor ref = t.to_dtype(want);
    iotest::expect_identical(o, ref, name);
  }
}

TEST(Safetensors, StoreFloatAsConvertsWithRoundToNearestEven) {
  TempDir tmp;
  NamedTensors in;
  in.set("w", ramp({4, 9}, 0.0123, -0.2));
  in.set("i", int_tensor({3}, DType::I64));
  for (const DType store : {DType::F16, DType::BF16, DType::F32}) {
    io::save_safetensors(tmp / "s.safetensors", in, store);
    const NamedTensors out = io::load_safetensors(tmp / "s.safetensors");
    EXPECT_EQ(out.at("w").dtype(), store);
    EXPECT_EQ(out.at("i").dtype(), DType::I64);
    // Reference: the scalar converters of core/dtype.hpp, element by element.
    const std::vector<float> src = in.at("w").to_vector();
    for (std::size_t k = 0; k < src.size(); ++k) {
      double want = src[k];
      if (store == DType::F16) want = half_to_float(float_to_half(src[k]));
      if (store == DType::BF16) want = bf16_to_float(float_to_bf16(src[k]));
      EXPECT_EQ(out.at("w").item_at(static_cast<std::int64_t>(k)), want) << k;
    }
    iotest::expect_identical(out.at("i"), in.at("i"), "i");
  }
  EXPECT_THROW(io::save_safetensors(tmp / "bad.safetensors", in, DType::I32), ArgumentError);
}

TEST(Safetensors, NhwcTensorsAreWrittenInLogicalOrder) {
  TempDir tmp;
  const Tensor nchw = ramp({2, 3, 4, 5});
  NamedTensors in;
  in.set("x", nchw.to_layout(Layout::NHWC));
  io::save_safetensors(tmp / "n.safetensors", in);
  const NamedTensors out = io::load_safetensors(tmp / "n.safetensors");
  EXPECT_EQ(out.at("x").layout(), Layout::Contiguous);
  iotest::expect_identical(out.at("x"), nchw, "x");
}

TEST(Safetensors, HeaderIsPaddedWithSpacesTo8Bytes) {
  TempDir tmp;
  for (int n = 1; n <= 9; ++n) {
    NamedTensors in;
    in.set(std::string(static_cast<std::size_t>(n), 'k'), ramp({n}));
    io::save_safetensors(tmp / "p.safetensors", in);
    const std::string b = iotest::read_file(tmp / "p.safetensors");
    std::uint64_t len = 0;
    std::memcpy(&len, b.data(), 8);
    EXPECT_EQ(len % 8, 0u) << n;
    const std::string header = b.substr(8, len);
    const auto close = header.find_last_of('}');
    EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << header;
    EXPECT_EQ(b.size(), 8 + len + static_cast<std::size_t>(n) * 4);
    const auto j = nlohmann::json::parse(header);
    EXPECT_EQ(j[std::string(static_cast<std::size_t>(n), 'k')]["dtype"], "F32");
  }
}

TEST(Safetensors, SaveIsAtomicAndReportsUnwritableTargets) {
  TempDir tmp;
  NamedTensors a, b;
  a.set("x", ramp({3}));
  b.set("y", ramp({4}));
  io::save_safetensors(tmp / "f.safetensors", a);
  io::save_safetensors(tmp / "f.safetensors", b);  // replaces
  EXPECT_EQ(io::load_safetensors(tmp / "f.safetensors").names(), std::vector<std::string>{"y"});
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(tmp.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1u) << "a temporary file was left behind";
  EXPECT_THROW(io::save_safetensors(tmp / "no" / "such" / "dir.safetensors", a), IoError);
  NamedTensors bad;
  bad.set("__metadata__", ramp({1}));
  EXPECT_THROW(io::save_safetensors(tmp / "m.safetensors", bad), ArgumentError);
  NamedTensors undef;
  undef.set("u", Tensor());
  EXPECT_THROW(io::save_safetensors(tmp / "u.safetensors", undef), ArgumentError);
  EXPECT_FALSE(fs::exists(tmp / "m.safetensors"));
}

class SafetensorsFiles : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(iotest::checkpoint_fixtures(dir_)); }
  fs::path dir_;
};

TEST_F(SafetensorsFiles, FileWrittenByPythonLoadsExactly) {
  const NamedTensors sd = io::load_safetensors(dir_ / "py_written.safetensors");
  iotest::expect_matches_case(sd, dir_, "py_written");
  EXPECT_EQ(sd.metadata.at("format"), "pt");
  EXPECT_EQ(sd.metadata.at("note"), "written by make_checkpoints.py");
}

TEST(Safetensors, LoadedTensorsViewTheMappingAndKeepItAlive) {
  TempDir tmp;
  NamedTensors in;
  in.set("a", ramp({16, 16}));
  in.set("b", ramp({5}).to_dtype(DType::F16));
  io::save_safetensors(tmp / "v.safetensors", in, DType::F32);
  Tensor kept;
  {
    const NamedTensors out = io::load_safetensors(tmp / "v.safetensors");
    for (const auto& [n, t] : out)
      EXPECT_TRUE(iotest::address_maps_file(t.raw(), tmp / "v.safetensors")) << n;
    kept = out.at("a");
  }
  fs::remove(tmp / "v.safetensors");
  iotest::expect_identical(kept, in.at("a"), "a after the file is gone");
}

// ---- hostile headers --------------------------------------------------------------------------

std::string st_file(const std::string& header, const std::string& data) {
  std::uint64_t n = header.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + header + data;
}

void expect_st_error(const std::string& bytes, const std::string& needle) {
  TempDir tmp;
  iotest::write_file(tmp / "bad.safetensors", bytes);
  try {
    io::load_safetensors(tmp / "bad.safetensors");
    ADD_FAILURE() << "expected FormatError mentioning '" << needle << "'";
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(needle), std::string::npos) << what;
    EXPECT_NE(what.find("bad.safetensors"), std::string::npos) << "should name the file: " << what;
  }
}

const std::string k8(8, '\0');

TEST(Safetensors, HeaderLyingAboutSizes) {
  // Shape needs 16 bytes, offsets span 8.
  expect_st_error(st_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", k8), "need 16 bytes");
  // Offsets past the end of the data.
  expect_st_error(st_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", k8),
                  "run past the end");
  // Overlap, gap, bytes left over, reversed offsets.
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          k8),
                  "overlap");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", k8), "gap");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", k8), "cover 4 of 8");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", k8), "reversed");
  // A shape whose element count overflows.
  expect_st_error(
      st_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", k8),
      "absurdly large");
}

TEST(Safetensors, TensorsComeInTheOrderOfTheirData) {
  TempDir tmp;
  const float v[4] = {1, 2, 3, 4};
  iotest::write_file(tmp / "o.safetensors",
                     st_file(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                             R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                             R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}})",
                             std::string(reinterpret_cast<const char*>(v), 16)));
  const NamedTensors sd = io::load_safetensors(tmp / "o.safetensors");
  EXPECT_EQ(sd.names(), (std::vector<std::string>{"a", "z", "b"}));
  EXPECT_EQ(sd.at("a").to_vector(), (std::vector<float>{1, 2}));
  EXPECT_EQ(sd.at("b").to_vector(), (std::vector<float>{3, 4}));
  EXPECT_EQ(sd.at("z").shape(), Shape({0}));
}

TEST(Safetensors, HeaderLengthLargerThanFile) {
  std::string b = st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", k8);
  const std::uint64_t lie = 1u << 30;
  b.replace(0, 8, std::string(reinterpret_cast<const char*>(&lie), 8));
  expect_st_error(b, "larger than the rest of the file");
  const std::uint64_t huge = ~std::uint64_t{0};
  b.replace(0, 8, std::string(reinterpret_cast<const char*>(&huge), 8));
  expect_st_error(b, "larger than the rest of the file");
}

TEST(Safetensors, MalformedHeaders) {
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", k8), "not valid JSON");
  expect_st_error(st_file(R"([1,2])", ""), "does not start with '{'");
  expect_st_error(st_file(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", k8),
                  "unsupported dtype 'Q7'");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", k8), "non-negative");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", k8), "non-negative");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[2]}})", k8), "data_offsets");
  expect_st_error(st_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", k8), "dtype");
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", k8),
                  "unexpected field");
  expect_st_error(st_file(R"({"a":7})", ""), "not an object");
  expect_st_error(st_file(R"({"__metadata__":{"k":1}})", ""), "not a string");
  expect_st_error(
      st_file(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", k8.substr(0, 4)),
      "rank");
  expect_st_error(st_file("{" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
                  "nests deeper");
}

TEST(Safetensors, ShortEmptyMissingAndGarbage) {
  expect_st_error("", "too short");
  expect_st_error("abc", "too short");
  TempDir tmp;
  EXPECT_THROW(io::load_safetensors(tmp / "missing.safetensors"), IoError);
  std::string garbage(4096, '\0');
  for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>((i * 7919) ^ (i >> 3));
  iotest::write_file(tmp / "g.safetensors", garbage);
  EXPECT_THROW(io::load_safetensors(tmp / "g.safetensors"), FormatError);
}

TEST(Safetensors, EveryTruncationIsAFormatError) {
  TempDir tmp;
  NamedTensors in;
  in.set("a", ramp({3, 3}));
  in.set("b", ramp({2}).to_dtype(DType::F16));
  io::save_safetensors(tmp / "full.safetensors", in);
  const std::string full = iotest::read_file(tmp / "full.safetensors");
  for (std::size_t len = 0; len < full.size(); ++len) {
    iotest::write_file(tmp / "t.safetensors", full.substr(0, len));
    EXPECT_THROW(io::load_safetensors(tmp / "t.safetensors"), FormatError) << "length " << len;
  }
}

// Loading maps the file: resident memory must not grow by the file's size until values are read.
TEST(Safetensors, LargeFileIsMappedNotRead) {
  TempDir tmp;
  const std::int64_t n = 50 << 20;  // 200 MB of f32
  {
    const std::string header = R"({"big":{"dtype":"F32","shape":[)" + std::to_string(n) +
                               R"(],"data_offsets":[0,)" + std::to_string(n * 4) + "]}}";
    std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
    std::ofstream out(tmp / "big.safetensors", std::ios::binary);
    const std::uint64_t len = padded.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(padded.data(), static_cast<std::streamsize>(padded.size()));
    std::vector<float> chunk(1 << 20);
    for (std::size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<float>(i);
    for (std::int64_t done = 0; done < n; done += static_cast<std::int64_t>(chunk.size()))
      out.write(reinterpret_cast<const char*>(chunk.data()), static_cast<std::streamsize>(chunk.size() * 4));
  }
  const std::size_t before = iotest::resident_bytes();
  const NamedTensors sd = io::load_safetensors(tmp / "big.safetensors");
  const std::size_t after = iotest::resident_bytes();
  EXPECT_LT(after, before + (32u << 20)) << "loading grew RSS by " << (after - before) / (1 << 20) << " MiB";
  // Touching a few values reads only their pages.
  const Tensor& t = sd.at("big");
  EXPECT_EQ(t.item_at(0), 0.0);
  EXPECT_EQ(t.item_at(n - 1), static_cast<double>((n - 1) % (1 << 20)));
  EXPECT_LT(iotest::resident_bytes(), before + (32u << 20));
}

}  // namespace
