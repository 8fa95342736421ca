// .npy (NumPy-written files of every supported dtype and version, round trips, refusals) and
// IDX (plain and gzip, limits, corrupt files).
#include <gtest/gtest.h>

#include "diffprobe/core/error.hpp"
#include "diffprobe/io/idx.hpp"
#include "diffprobe/io/npy.hpp"
#include "io/io_fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using namespace diffprobe;
using iotest::TempDir;

class NumpyFiles : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(iotest::checkpoint_fixtures(dir_)); }
  fs::path dir_;
};

void expect_values(const Tensor& t, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(t.numel(), static_cast<std::int64_t>(want.size())) << what;
  for (std::size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(t.item_at(static_cast<std::int64_t>(i)), want[i]) << what << " element " << i;
}

TEST_F(NumpyFiles, EveryDtypeAndVersionLoadsExactly) {
  struct Case {
    const char* name;
    DType dtype;
    Shape shape;
  };
  const Case cases[] = {
      {"npy_f32", DType::F32, {3, 4}}, {"npy_f16", DType::F16, {2, 2, 3}},     {"npy_f64", DType::F32, {7}},
      {"npy_i32", DType::I32, {3, 4}}, {"npy_i64", DType::I64, {3}},           {"npy_u8", DType::I32, {4, 4}},
      {"npy_scalar", DType::F32, {}},  {"npy_fortran", DType::F32, {3, 5, 2}}, {"npy_v2", DType::F32, {2, 3}},
      {"npy_v3", DType::F32, {4}},
  };
  for (const auto& c : cases) {
    const Tensor t = io::load_npy(dir_ / (std::string(c.name) + ".npy"));
    EXPECT_EQ(t.dtype(), c.dtype) << c.name;
    EXPECT_EQ(t.shape(), c.shape) << c.name;
    expect_values(t, iotest::read_f64(dir_ / (std::string(c.name) + ".expect")), c.name);
  }
}

TEST_F(NumpyFiles, BigEndianIsRefused) {
  try {
    io::load_npy(dir_ / "npy_bigendian.npy");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(">f4"), std::string::npos) << e.what();
  }
}

TEST(Npy, RoundTripEveryWritableDtype) {
  TempDir tmp;
  std::vector<float> v(60);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.731f - 9.0f;
  const Tensor f32 = Tensor::from_vector({3, 4, 5}, v);
  Tensor i64 = Tensor::empty({4}, DType::I64);
  for (int i = 0; i < 4; ++i) i64.data<std::int64_t>()[i] = (std::int64_t{1} << 45) * (i - 1);
  for (const Tensor& t : {f32, f32.to_dtype(DType::F16), f32.to_dtype(DType::I32), i64,
                          Tensor::from_vector({}, std::vector<float>{2.5f}), Tensor::empty({0, 2})}) {
    io::save_npy(tmp / "r.npy", t);
    const Tensor back = io::load_npy(tmp / "r.npy");
    iotest::expect_identical(back, t, t.str());
    const std::string b = iotest::read_file(tmp / "r.npy");
    std::uint16_t hlen = 0;
    std::memcpy(&hlen, b.data() + 8, 2);
    EXPECT_EQ((10 + hlen) % 64, 0u) << "data should start 64-byte aligned";
    EXPECT_EQ(b[9 + hlen], '\n');
  }
}

TEST(Npy, NhwcIsSavedInLogicalOrderAndBf16IsRefused) {
  TempDir tmp;
  std::vector<float> v(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  const Tensor nchw = Tensor::from_vector({2, 3, 4, 5}, v);
  io::save_npy(tmp / "n.npy", nchw.to_layout(Layout::NHWC));
  iotest::expect_identical(io::load_npy(tmp / "n.npy"), nchw, "nhwc");
  EXPECT_THROW(io::save_npy(tmp / "b.npy", nchw.to_dtype(DType::BF16)), DTypeError);
  EXPECT_THROW(io::save_npy(tmp / "u.npy", Tensor()), ArgumentError);
  EXPECT_THROW(io::save_npy(tmp / "missing" / "x.npy", nchw), IoError);
}

std::string npy_bytes(const std::string& header, const std::string& data, int major = 1) {
  std::string b = "\x93NUMPY";
  b += static_cast<char>(major);
  b += '\0';
  const auto n = static_cast<std::uint32_t>(header.size());
  b.append(reinterpret_cast<const char*>(&n), major == 1 ? 2 : 4);
  return b + header + data;
}

void expect_npy_error(const std::string& bytes, const std::string& needle) {
  TempDir tmp;
  iotest::write_file(tmp / "bad.npy", bytes);
  try {
    io::load_npy(tmp / "bad.npy");
    ADD_FAILURE() << "expected FormatError mentioning '" << needle << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Npy, CorruptFilesAreFormatErrors) {
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
  const std::string eight(8, '\0');
  expect_npy_error("not numpy at all", "bad magic");
  expect_npy_error(npy_bytes(ok, eight.substr(0, 4)), "need 8");
  expect_npy_error(npy_bytes(ok, eight + "x"), "need 8");
  expect_npy_error(npy_bytes(ok, eight, 4), "version 4");
  expect_npy_error(npy_bytes("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", eight), "'<c8'");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'shape': (2,), }", eight), "lacks");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", eight),
                   "fortran_order");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", eight),
                   "dimension");
  expect_npy_error(
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", eight),
      "overflows");
  expect_npy_error(
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 8), }", eight),
      "absurdly large");
  expect_npy_error(
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", "1234"), "rank");
  expect_npy_error(npy_bytes("{'descr': '<f4", eight), "unterminated");
  std::string lying = npy_bytes(ok, eight);
  lying[8] = '\xff';
  lying[9] = '\x7f';
  expect_npy_error(lying, "exceeds the file");
  TempDir tmp;
  EXPECT_THROW(io::load_npy(tmp / "missing.npy"), IoError);
}

// ---- IDX --------------------------------------------------------------------------------------

TEST_F(NumpyFiles, IdxPlainAndGzipLoadTheSameValues) {
  for (const std::string name : {"idx_images", "idx_labels", "idx_float"}) {
    const std::vector<double> want = iotest::read_f64(dir_ / (name + ".expect"));
    for (const std::string suffix : {"", ".gz"}) {
      const Tensor t = io::load_idx(dir_ / (name + suffix));
      EXPECT_EQ(t.dtype(), name == "idx_float" ? DType::F32 : DType::I32) << name;
      expect_values(t, want, name + suffix);
    }
  }
  EXPECT_EQ(io::load_idx(dir_ / "idx_images.gz").shape(), Shape({5, 4, 3}));
  EXPECT_EQ(io::load_idx(dir_ / "idx_labels").shape(), Shape({5}));
}

TEST_F(NumpyFiles, IdxLimitReadsTheFirstItems) {
  const std::vector<double> want = iotest::read_f64(dir_ / "idx_images.expect");
  for (const std::string suffix : {"", ".gz"}) {
    const Tensor t = io::load_idx(dir_ / ("idx_images" + suffix), 2);
    EXPECT_EQ(t.shape(), Shape({2, 4, 3}));
    expect_values(t, std::vector<double>(want.begin(), want.begin() + 24), "limit 2");
    EXPECT_EQ(io::load_idx(dir_ / ("idx_images" + suffix), 50).shape(), Shape({5, 4, 3}));
  }
  EXPECT_THROW(io::load_idx(dir_ / "idx_images", -1), ArgumentError);
}

TEST_F(NumpyFiles, IdxCorruptGzipIsAFormatError) {
  EXPECT_THROW(io::load_idx(dir_ / "idx_truncated.gz"), FormatError);
  EXPECT_THROW(io::load_idx(dir_ / "idx_corrupt.gz"), FormatError);
}

std::string idx_header(std::uint8_t type, const std::vector<std::uint32_t>& dims) {
  std::string b = {'\0', '\0', static_cast<char>(type), static_cast<char>(dims.size())};
  for (const auto d : dims)
    for (int s = 24; s >= 0; s -= 8) b += static_cast<char>((d >> s) & 0xff);
  return b;
}

void expect_idx_error(const std::string& bytes, const std::string& needle) {
  TempDir tmp;
  iotest::write_file(tmp / "bad-idx", bytes);
  try {
    io::load_idx(tmp / "bad-idx");
    ADD_FAILURE() << "expected FormatError mentioning '" << needle << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Idx, BigEndianTypesAndHostileHeaders) {
  TempDir tmp;
  // i16 and i32 big-endian, f64 converted to f32: checked against plain values.
  iotest::write_file(tmp / "s16", idx_header(0x0B, {3}) + std::string("\xff\xfe\x01\x00\x7f\xff", 6));
  EXPECT_EQ(io::load_idx(tmp / "s16").to_vector(), (std::vector<float>{-2, 256, 32767}));
  iotest::write_file(tmp / "s32", idx_header(0x0C, {2}) + std::string("\xff\xff\xff\xfd\x00\x01\x00\x00", 8));
  const Tensor s32 = io::load_idx(tmp / "s32");
  EXPECT_EQ(s32.item_at(0), -3.0);
  EXPECT_EQ(s32.item_at(1), 65536.0);
  iotest::write_file(tmp / "f64", idx_header(0x0E, {1}) + std::string("\x3f\xf8\0\0\0\0\0\0", 8));
  EXPECT_EQ(io::load_idx(tmp / "f64").item_at(0), 1.5);

  expect_idx_error(std::string("\x01\x02\x08\x01", 4), "bad magic");
  expect_idx_error(idx_header(0x42, {1}) + "x", "type code");
  expect_idx_error(idx_header(0x08, {}), "rank 0");
  expect_idx_error(std::string("\0\0\x08\x09", 4), "rank 9");
  expect_idx_error(idx_header(0x08, {3}).substr(0, 6), "header truncated");
  expect_idx_error(idx_header(0x08, {4}) + "abc", "cannot hold");
  expect_idx_error(idx_header(0x08, {2}) + "abc", "past what its header describes");
  // A header claiming 16 TB of data must not allocate it.
  expect_idx_error(idx_header(0x0D, {65535, 65535, 4096}) + "xxxx", "cannot hold");
  expect_idx_error(idx_header(0x0D, {0xffffffffu, 0xffffffffu, 0xffffffffu}) + "xxxx", "absurdly large");
  expect_idx_error("", "too short");
  EXPECT_THROW(io::load_idx(tmp / "missing-idx"), IoError);
}

}  // namespace
