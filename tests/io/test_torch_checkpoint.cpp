// PyTorch checkpoints without Python: files written by the real torch.save (zip and legacy, all
// float types, shared flat storages, non-contiguous views) must load bit-exactly; hand-built and
// corrupted files must end in FormatError / IoError / UnsupportedError, never a crash.
#include <gtest/gtest.h>

#include <random>

#include "diffprobe/core/error.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/io/torch_checkpoint.hpp"
#include "io/io_fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using namespace diffprobe;
using namespace std::string_literals;
using io::NamedTensors;
using iotest::TempDir;

class TorchFiles : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(iotest::checkpoint_fixtures(dir_)); }
  fs::path dir_;
};

// ---- files written by torch.save --------------------------------------------------------------

void check_case(const fs::path& dir, const std::string& name, io::WeightsFormat format) {
  const fs::path file = dir / (name + ".pt");
  EXPECT_EQ(io::detect_weights_format(file), format) << name;
  NamedTensors got = io::load_torch_checkpoint(file);
  iotest::expect_matches_case(got, dir, name);
}

TEST_F(TorchFiles, ZipF32MatchesTorchExactly) { check_case(dir_, "zip_f32", io::WeightsFormat::TorchZip); }
TEST_F(TorchFiles, LegacyF32MatchesTorchExactly) {
  check_case(dir_, "legacy_f32", io::WeightsFormat::TorchLegacy);
}
TEST_F(TorchFiles, ZipF16KeepsHalf) { check_case(dir_, "zip_f16", io::WeightsFormat::TorchZip); }
TEST_F(TorchFiles, LegacyF16KeepsHalf) { check_case(dir_, "legacy_f16", io::WeightsFormat::TorchLegacy); }
TEST_F(TorchFiles, ZipBF16KeepsBFloat16) { check_case(dir_, "zip_bf16", io::WeightsFormat::TorchZip); }
TEST_F(TorchFiles, LegacyBF16KeepsBFloat16) {
  check_case(dir_, "legacy_bf16", io::WeightsFormat::TorchLegacy);
}
TEST_F(TorchFiles, ParametersThroughRebuildParameter) {
  check_case(dir_, "zip_param", io::WeightsFormat::TorchZip);
  check_case(dir_, "legacy_param", io::WeightsFormat::TorchLegacy);
}
TEST_F(TorchFiles, PlainDictAtTopLevel) { check_case(dir_, "zip_plain_dict", io::WeightsFormat::TorchZip); }
TEST_F(TorchFiles, StateDictWrappedInTrainingCheckpoint) {
  check_case(dir_, "zip_wrapped", io::WeightsFormat::TorchZip);
}
TEST_F(TorchFiles, SharedFlatStoragesLegacyF16) {
  check_case(dir_, "shared_legacy_f16", io::WeightsFormat::TorchLegacy);
}
TEST_F(TorchFiles, SharedFlatStoragesLegacyF32) {
  check_case(dir_, "shared_legacy_f32", io::WeightsFormat::TorchLegacy);
}
TEST_F(TorchFiles, SharedFlatStoragesZipF16) {
  check_case(dir_, "shared_zip_f16", io::WeightsFormat::TorchZip);
}
TEST_F(TorchFiles, SharedFlatStoragesZipF32) {
  check_case(dir_, "shared_zip_f32", io::WeightsFormat::TorchZip);
}
TEST_F(TorchFiles, NonContiguousViewsZip) { check_case(dir_, "noncontig_zip", io::WeightsFormat::TorchZip); }
TEST_F(TorchFiles, NonContiguousViewsLegacy) {
  check_case(dir_, "noncontig_legacy", io::WeightsFormat::TorchLegacy);
}

TEST_F(TorchFiles, LoadWeightsDispatchesOnContent) {
  iotest::expect_matches_case(io::load_weights(dir_ / "zip_f16.pt"), dir_, "zip_f16");
  iotest::expect_matches_case(io::load_weights(dir_ / "legacy_f32.pt"), dir_, "legacy_f32");
  iotest::expect_matches_case(io::load_weights(dir_ / "py_written.safetensors"), dir_, "py_written");
  EXPECT_EQ(io::detect_weights_format(dir_ / "py_written.safetensors"), io::WeightsFormat::Safetensors);
  EXPECT_EQ(io::detect_weights_format(dir_ / "npy_f32.npy"), io::WeightsFormat::Unknown);
  EXPECT_THROW(io::load_weights(dir_ / "npy_f32.npy"), FormatError);
  EXPECT_STREQ(io::weights_format_name(io::WeightsFormat::TorchLegacy), "torch legacy");
  EXPECT_STREQ(io::weights_format_name(io::WeightsFormat::TorchZip), "torch zip");
  EXPECT_STREQ(io::weights_format_name(io::WeightsFormat::Safetensors), "safetensors");
  EXPECT_STREQ(io::weights_format_name(io::WeightsFormat::Unknown), "unknown");
}

// Zip tensors that are contiguous view the file's mapping (no copy) and keep it alive; legacy
// data is unaligned and non-contiguous tensors are materialised, so those are copies.
TEST_F(TorchFiles, ZipTensorsViewTheMappingAndKeepItAlive) {
  TempDir tmp;
  const fs::path file = tmp / "copy.pt";
  fs::copy_file(dir_ / "shared_zip_f32.pt", file);
  Tensor kept;
  std::vector<float> want;
  {
    NamedTensors sd = io::load_torch_checkpoint(file);
    for (const auto& [name, t] : sd) EXPECT_TRUE(iotest::address_maps_file(t.raw(), file)) << name;
    kept = sd.at("out.2.weight");
    want = kept.to_vector();
  }
  fs::remove(file);  // the mapping outlives both the collection and the directory entry
  EXPECT_EQ(kept.to_vector(), want);

  NamedTensors nc = io::load_torch_checkpoint(dir_ / "noncontig_zip.pt");
  EXPECT_FALSE(iotest::address_maps_file(nc.at("transposed").raw(), dir_ / "noncontig_zip.pt"));
  EXPECT_TRUE(iotest::address_maps_file(nc.at("row").raw(), dir_ / "noncontig_zip.pt"));
  NamedTensors legacy = io::load_torch_checkpoint(dir_ / "legacy_f32.pt");
  EXPECT_FALSE(iotest::file_is_mapped(dir_ / "legacy_f32.pt"))
      << "legacy tensors are copies: the file is unmapped";
  EXPECT_TRUE(iotest::file_is_mapped(dir_ / "noncontig_zip.pt"));
  for (const auto& [name, t] : legacy) {
    if (t.numel() > 0) {
      EXPECT_FALSE(iotest::address_maps_file(t.raw(), dir_ / "legacy_f32.pt")) << name;
    }
  }
}

// Writing into a loaded tensor must neither crash (read-only pages) nor change the file.
TEST_F(TorchFiles, WritingALoadedTensorLeavesTheFileAlone) {
  const fs::path file = dir_ / "zip_f32.pt";
  const std::string before = iotest::read_file(file);
  {
    NamedTensors sd = io::load_torch_checkpoint(file);
    Tensor w = sd.at("big");
    float* p = w.data<float>();
    for (std::int64_t i = 0; i < w.numel(); ++i) p[i] = 42.0f;
  }
  EXPECT_EQ(iotest::read_file(file), before);
  EXPECT_NE(io::load_torch_checkpoint(file).at("big").item_at(0), 42.0);
}

// ---- hostile pickles written by Python --------------------------------------------------------

TEST_F(TorchFiles, ZipPickleCallingOsSystemIsRefused) {
  try {
    io::load_torch_checkpoint(dir_ / "evil_zip.pt");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("posix.system"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "PWNED"));
}

TEST_F(TorchFiles, LegacyPickleCallingOsSystemIsRefused) {
  try {
    io::load_torch_checkpoint(dir_ / "evil_legacy.pt");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("posix.system"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "PWNED"));
}

TEST_F(TorchFiles, LoadFromBytesIsRefused) {
  try {
    io::load_torch_checkpoint(dir_ / "evil_load_from_bytes.pt");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("torch.storage._load_from_bytes"), std::string::npos) << e.what();
  }
}

// ---- corrupting real files --------------------------------------------------------------------

// Loads `bytes` as a checkpoint; returns "" on success, else the diffprobe error kind. Any other
// exception (or a crash, which ASan reports) fails the test.
std::string try_load(const fs::path& file, const std::string& bytes) {
  iotest::write_file(file, bytes);
  try {
    NamedTensors sd = io::load_torch_checkpoint(file);
    for (const auto& [n, t] : sd) {
      if (t.numel() > 0) (void)t.to_vector();  // touch every value
    }
    return "";
  } catch (const Error& e) {
    return error_kind_name(e.kind());
  }
}

TEST_F(TorchFiles, TruncatedZipIsAFormatError) {
  TempDir tmp;
  const std::string full = iotest::read_file(dir_ / "zip_f32.pt");
  for (std::size_t len : {std::size_t{0}, std::size_t{3}, std::size_t{30}, full.size() / 2, full.size() - 22,
                          full.size() - 1}) {
    iotest::write_file(tmp / "t.pt", full.substr(0, len));
    EXPECT_THROW(io::load_torch_checkpoint(tmp / "t.pt"), FormatError) << "length " << len;
  }
  // Every cut point: always an error, never a crash.
  for (std::size_t len = 1; len < full.size(); len += 7)
    EXPECT_EQ(try_load(tmp / "t.pt", full.substr(0, len)), "format error") << "length " << len;
}

TEST_F(TorchFiles, TruncatedLegacyIsAFormatError) {
  TempDir tmp;
  const std::string full = iotest::read_file(dir_ / "legacy_f32.pt");
  for (std::size_t len = 2; len < full.size(); len += 5)
    EXPECT_EQ(try_load(tmp / "t.pt", full.substr(0, len)), "format error") << "length " << len;
  EXPECT_EQ(try_load(tmp / "t.pt", full + "x"), "format error");  // trailing garbage
}

TEST_F(TorchFiles, RandomByteFlipsNeverCrash) {
  TempDir tmp;
  std::mt19937 rng(7);
  for (const char* name : {"zip_f32.pt", "legacy_f16.pt", "shared_legacy_f16.pt", "noncontig_zip.pt"}) {
    const std::string full = iotest::read_file(dir_ / name);
    int errors = 0;
    for (int iter = 0; iter < 150; ++iter) {
      std::string b = full;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<char>(rng());
      const std::string r = try_load(tmp / "f.pt", b);
      EXPECT_TRUE(r.empty() || r == "format error" || r == "unsupported") << name << ": " << r;
      errors += !r.empty();
    }
    EXPECT_GT(errors, 0) << name;  // the checks do fire
  }
}

TEST(TorchCheckpoint, MissingFileIsAnIoError) {
  EXPECT_THROW(io::load_torch_checkpoint("/nonexistent/dir/model.pt"), IoError);
  EXPECT_THROW(io::detect_weights_format("/nonexistent/dir/model.pt"), IoError);
  EXPECT_THROW(io::load_weights("/nonexistent/dir/model.pt"), IoError);
  TempDir tmp;
  EXPECT_THROW(io::load_torch_checkpoint(tmp.path()), IoError);  // a directory
}

TEST(TorchCheckpoint, EmptyFileIsAFormatError) {
  TempDir tmp;
  iotest::write_file(tmp / "empty.pt", "");
  EXPECT_THROW(io::load_torch_checkpoint(tmp / "empty.pt"), FormatError);
  EXPECT_EQ(io::detect_weights_format(tmp / "empty.pt"), io::WeightsFormat::Unknown);
  EXPECT_THROW(io::load_weights(tmp / "empty.pt"), FormatError);
}

TEST(TorchCheckpoint, RandomGarbageIsAFormatError) {
  TempDir tmp;
  std::mt19937 rng(3);
  for (int iter = 0; iter < 50; ++iter) {
    std::string b(1 + rng() % 5000, '\0');
    for (auto& c : b) c = static_cast<char>(rng());
    if (iter % 3 == 1)
      b.replace(0, std::min<std::size_t>(4, b.size()), "PK\x03\x04", std::min<std::size_t>(4, b.size()));
    if (iter % 3 == 2) b[0] = static_cast<char>(0x80);
    iotest::write_file(tmp / "g.pt", b);
    EXPECT_THROW(io::load_torch_checkpoint(tmp / "g.pt"), FormatError) << "iteration " << iter;
  }
}

// ---- hand-built files -------------------------------------------------------------------------

// Pickle opcodes as torch writes them (protocol 2).
struct Pickle {
  std::string b = "\x80\x02";
  Pickle& raw(const std::string& s) {
    b += s;
    return *this;
  }
  Pickle& str(const std::string& s) {
    b += 'X';
    const auto n = static_cast<std::uint32_t>(s.size());
    b.append(reinterpret_cast<const char*>(&n), 4);
    b += s;
    return *this;
  }
  Pickle& integer(std::int64_t v) {
    if (v >= 0 && v < 256) {
      b += 'K';
      b += static_cast<char>(v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      b += 'J';
      const auto x = static_cast<std::int32_t>(v);
      b.append(reinterpret_cast<const char*>(&x), 4);
    } else {
      b += "\x8a\x08";
      b.append(reinterpret_cast<const char*>(&v), 8);
    }
    return *this;
  }
  Pickle& global(const std::string& m, const std::string& n) { return raw("c" + m + "\n" + n + "\n"); }
  Pickle& ints(const std::vector<std::int64_t>& v) {
    raw("(");
    for (auto x : v) integer(x);
    return raw("t");
  }
};

struct TensorDesc {
  std::string name;
  std::vector<std::int64_t> size, stride;
  std::int64_t offset = 0;
  std::string key = "0";
  std::int64_t numel = 0;
  std::string storage = "FloatStorage";
};

std::string state_dict_pickle(const std::vector<TensorDesc>& ts, bool legacy) {
  Pickle p;
  p.global("collections", "OrderedDict").raw(")R(");
  for (const auto& t : ts) {
    p.str(t.name)
        .global("torch._utils", "_rebuild_tensor_v2")
        .raw("((")
        .str("storage")
        .global("torch", t.storage);
    p.str(t.key).str("cpu").integer(t.numel);
    if (legacy) p.raw("N");
    p.raw("tQ").integer(t.offset).ints(t.size).ints(t.stride).raw("\x89");
    p.global("collections", "OrderedDict").raw(")RtR");
  }
  return p.raw("u.").b;
}

std::string le64(std::uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }
std::string le32(std::uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string le16(std::uint16_t v) { return std::string(reinterpret_cast<const char*>(&v), 2); }

struct ZipOptions {
  bool zip64 = true;             // zip64 extra fields, end record and locator, as torch writes
  bool zero_local_sizes = true;  // sizes and CRC only in the central directory and a descriptor
  std::uint16_t method = 0;      // 0 = stored
};

// A zip in the layout torch writes: data 64-byte aligned through a padding extra field.
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries, ZipOptions o = {}) {
  std::string out, central;
  for (const auto& [name, data] : entries) {
    const auto offset = static_cast<std::uint32_t>(out.size());
    const std::size_t fixed = out.size() + 30 + name.size() + 4;
    const std::size_t pad = (64 - fixed % 64) % 64;
    const std::uint16_t flags = o.zero_local_sizes ? 0x0808 : 0x0800;
    const auto size = static_cast<std::uint32_t>(data.size());
    out += le32(0x04034b50) + le16(20) + le16(flags) + le16(o.method) + le32(0);
    out += le32(0) + le32(o.zero_local_sizes ? 0 : size) + le32(o.zero_local_sizes ? 0 : size);
    out += le16(static_cast<std::uint16_t>(name.size())) + le16(static_cast<std::uint16_t>(4 + pad)) + name;
    out += le16(0x4246) + le16(static_cast<std::uint16_t>(pad)) + std::string(pad, 'Z');
    out += data;
    if (o.zero_local_sizes) out += le32(0x08074b50) + le32(0) + le32(size) + le32(size);
    const std::uint32_t sat = 0xffffffffu;
    central += le32(0x02014b50) + le16(0x031e) + le16(20) + le16(flags) + le16(o.method) + le32(0) + le32(0);
    central += le32(o.zip64 ? sat : size) + le32(o.zip64 ? sat : size);
    central += le16(static_cast<std::uint16_t>(name.size())) + le16(o.zip64 ? 28 : 0) + le16(0) + le16(0) +
               le16(0) + le32(0) + le32(o.zip64 ? sat : offset) + name;
    if (o.zip64) central += le16(1) + le16(24) + le64(size) + le64(size) + le64(offset);
  }
  const std::uint64_t cd_offset = out.size(), cd_size = central.size(), n = entries.size();
  out += central;
  if (o.zip64) {
    const std::uint64_t z64 = out.size();
    out += le32(0x06064b50) + le64(44) + le16(0x031e) + le16(45) + le32(0) + le32(0) + le64(n) + le64(n) +
           le64(cd_size) + le64(cd_offset);
    out += le32(0x07064b50) + le32(0) + le64(z64) + le32(1);
    out += le32(0x06054b50) + le16(0) + le16(0) + le16(0xffff) + le16(0xffff) + le32(0xffffffffu) +
           le32(0xffffffffu) + le16(0);
  } else {
    out += le32(0x06054b50) + le16(0) + le16(0) + le16(static_cast<std::uint16_t>(n)) +
           le16(static_cast<std::uint16_t>(n)) + le32(static_cast<std::uint32_t>(cd_size)) +
           le32(static_cast<std::uint32_t>(cd_offset)) + le16(0);
  }
  return out;
}

std::string floats(std::initializer_list<float> v) {
  return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * 4);
}

// A storage of 12 floats 0..11 and tensors viewing it at offsets.
std::string twelve() {
  std::string s;
  for (int i = 0; i < 12; ++i) s += floats({static_cast<float>(i)});
  return s;
}

std::string zip_checkpoint(const std::vector<TensorDesc>& ts, const std::string& data, ZipOptions o = {},
                           const std::string& top = "any_top-folder.name") {
  return make_zip(
      {{top + "/data.pkl", state_dict_pickle(ts, false)}, {top + "/data/0", data}, {top + "/version", "3\n"}},
      o);
}

std::string expect_format_error(const std::string& bytes, const std::string& needle) {
  TempDir tmp;
  iotest::write_file(tmp / "x.pt", bytes);
  try {
    io::load_torch_checkpoint(tmp / "x.pt");
    ADD_FAILURE() << "expected FormatError mentioning '" << needle << "'";
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(needle), std::string::npos) << what;
    EXPECT_NE(what.find("x.pt"), std::string::npos) << "the message should name the file: " << what;
    return what;
  }
  return "";
}

TEST(TorchCheckpoint, HandBuiltZipHonoursOffsetsSizesAndStrides) {
  const std::vector<TensorDesc> ts = {
      {"a", {2, 3}, {3, 1}, 1, "0", 12},  // contiguous at offset 1 (a view)
      {"b", {3, 2}, {1, 3}, 2, "0", 12},  // transposed at offset 2 (materialised)
      {"c", {}, {}, 11, "0", 12},         // a scalar, the last element
      {"d", {2, 2}, {0, 5}, 0, "0", 12},  // stride 0 (broadcast)
  };
  for (const bool zip64 : {true, false})
    for (const bool zero_local : {true, false}) {
      TempDir tmp;
      iotest::write_file(tmp / "h.pt", zip_checkpoint(ts, twelve(), {zip64, zero_local, 0}));
      const NamedTensors sd = io::load_torch_checkpoint(tmp / "h.pt");
      ASSERT_EQ(sd.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
      // Plain double reference: element (i, j) of a strided view is storage[offset + i*s0 + j*s1].
      for (const auto& t : ts) {
        const Tensor& x = sd.at(t.name);
        ASSERT_EQ(x.shape(), Shape(t.size)) << t.name;
        for (std::int64_t k = 0; k < x.numel(); ++k) {
          std::int64_t rem = k, lin = t.offset;
          for (std::size_t d = t.size.size(); d-- > 0;) {
            lin += (rem % t.size[d]) * t.stride[d];
            rem /= t.size[d];
          }
          EXPECT_EQ(x.item_at(k), static_cast<double>(lin)) << t.name << " element " << k;
        }
      }
    }
}

TEST(TorchCheckpoint, StorageOffsetPastTheEndOfAStorage) {
  expect_format_error(zip_checkpoint({{"w", {4}, {1}, 10, "0", 12}}, twelve()), "past the end of storage");
  expect_format_error(zip_checkpoint({{"w", {2, 3}, {8, 2}, 0, "0", 12}}, twelve()),
                      "past the end of storage");
  expect_format_error(zip_checkpoint({{"w", {0}, {1}, 13, "0", 12}}, twelve()),
                      "storage offset past the end");
}

TEST(TorchCheckpoint, StorageLargerThanItsRecord) {
  expect_format_error(zip_checkpoint({{"w", {4}, {1}, 0, "0", 13}}, twelve()), "claims 13 elements");
  expect_format_error(zip_checkpoint({{"w", {4}, {1}, 0, "0", std::int64_t{1} << 62}}, twelve()), "claims");
  expect_format_error(zip_checkpoint({{"w", {4}, {1}, 0, "0", -1}}, twelve()), "negative size");
}

TEST(TorchCheckpoint, NegativeAndAbsurdShapes) {
  expect_format_error(zip_checkpoint({{"w", {-1}, {1}, 0, "0", 12}}, twelve()), "negative size or stride");
  expect_format_error(zip_checkpoint({{"w", {2}, {-1}, 0, "0", 12}}, twelve()), "negative size or stride");
  expect_format_error(zip_checkpoint({{"w", {2}, {1}, -1, "0", 12}}, twelve()), "negative storage offset");
  const std::int64_t huge = std::int64_t{1} << 40;
  expect_format_error(zip_checkpoint({{"w", {huge, huge}, {1, 1}, 0, "0", 12}}, twelve()), "overflows");
  expect_format_error(zip_checkpoint({{"w", {huge}, {1}, 0, "0", 12}}, twelve()), "past the end");
  expect_format_error(
      zip_checkpoint({{"w", std::vector<std::int64_t>(9, 1), std::vector<std::int64_t>(9, 1), 0, "0", 12}},
                     twelve()),
      "rank 9");
  expect_format_error(zip_checkpoint({{"w", {2, 2}, {1}, 0, "0", 12}}, twelve()), "dimensions");
}

TEST(TorchCheckpoint, UnsupportedStorageTypeIsNamed) {
  TensorDesc t{"w", {2}, {1}, 0, "0", 2, "ComplexFloatStorage"};
  expect_format_error(zip_checkpoint({t}, floats({1, 2, 3, 4})), "torch.ComplexFloatStorage");
}

TEST(TorchCheckpoint, IntegerAndDoubleStoragesConvert) {
  TempDir tmp;
  std::string bytes_u8 = "\x01\xff\x07";
  double dv[2] = {0.1, -1e300};
  const std::string dbl(reinterpret_cast<const char*>(dv), 16);
  iotest::write_file(tmp / "u8.pt",
                     make_zip({{"a/data.pkl", state_dict_pickle({{"u", {3}, {1}, 0, "0", 3, "ByteStorage"},
                                                                 {"d", {2}, {1}, 0, "1", 2, "DoubleStorage"}},
                                                                false)},
                               {"a/data/0", bytes_u8},
                               {"a/data/1", dbl}}));
  const NamedTensors sd = io::load_torch_checkpoint(tmp / "u8.pt");
  EXPECT_EQ(sd.at("u").dtype(), DType::I32);
  EXPECT_EQ(sd.at("u").item_at(1), 255.0);
  EXPECT_EQ(sd.at("d").dtype(), DType::F32);
  EXPECT_EQ(sd.at("d").item_at(0), static_cast<double>(0.1f));
  EXPECT_TRUE(std::isinf(sd.at("d").item_at(1)));
}

TEST(TorchCheckpoint, MissingStorageRecordOrDataPkl) {
  const std::string pkl = state_dict_pickle({{"w", {2}, {1}, 0, "7", 2}}, false);
  expect_format_error(make_zip({{"a/data.pkl", pkl}, {"a/data/0", floats({1, 2})}}), "has no entry a/data/7");
  expect_format_error(make_zip({{"a/other.pkl", pkl}}), "no <folder>/data.pkl");
  expect_format_error(make_zip({{"a/data.pkl", pkl}, {"b/data.pkl", pkl}}), "two data.pkl");
}

TEST(TorchCheckpoint, CompressedEntriesAreUnsupported) {
  TempDir tmp;
  iotest::write_file(tmp / "c.pt",
                     zip_checkpoint({{"w", {2}, {1}, 0, "0", 2}}, floats({1, 2}), {true, true, 8}));
  EXPECT_THROW(io::load_torch_checkpoint(tmp / "c.pt"), UnsupportedError);
}

TEST(TorchCheckpoint, BadCentralDirectory) {
  const std::string good = zip_checkpoint({{"w", {2}, {1}, 0, "0", 2}}, floats({1, 2}), {false, false, 0});
  const std::size_t eocd = good.size() - 22;
  std::uint32_t cd;
  std::memcpy(&cd, good.data() + eocd + 16, 4);
  {  // central directory signature destroyed
    std::string b = good;
    b[cd] = 'X';
    expect_format_error(b, "bad central directory signature");
  }
  {  // central directory offset past the end of the file
    std::string b = good;
    const std::string off = le32(static_cast<std::uint32_t>(good.size() + 100));
    b.replace(eocd + 16, 4, off);
    expect_format_error(b, "runs past the end of the file");
  }
  {  // more entries than the directory can hold
    std::string b = good;
    b.replace(eocd + 10, 2, le16(5000));
    expect_format_error(b, "cannot fit");
  }
  {  // local header offset pointing into nowhere
    std::string b = good;
    b.replace(cd + 42, 4, le32(0x7fffff00));
    expect_format_error(b, "outside the file");
  }
  {  // an entry size past the end of the file
    std::string b = good;
    b.replace(cd + 20, 4, le32(0x7fffff00));
    b.replace(cd + 24, 4, le32(0x7fffff00));
    expect_format_error(b, "runs past the end of the file");
  }
  {  // zip64 locator pointing outside the file
    std::string b = zip_checkpoint({{"w", {2}, {1}, 0, "0", 2}}, floats({1, 2}));
    b.replace(b.size() - 22 - 20 + 8, 8, le64(0x7fffffffffff));
    expect_format_error(b, "zip64 end record offset");
  }
  {  // zip64 extra field missing although the central entry says it is there
    std::string b = zip_checkpoint({{"w", {2}, {1}, 0, "0", 2}}, floats({1, 2}));
    const std::size_t pos = b.find("\x01\x00\x18\x00"s);
    ASSERT_NE(pos, std::string::npos);
    b.replace(pos + 2, 2, le16(4));
    expect_format_error(b, "zip64 extra field");
  }
  {  // no end record at all
    expect_format_error(good.substr(0, eocd), "end-of-central-directory");
  }
}

// Raw object pickles inside an otherwise valid zip.
std::string zip_with_pickle(const std::string& pkl) {
  return make_zip({{"a/data.pkl", pkl}, {"a/data/0", floats({1, 2, 3, 4})}});
}

TEST(TorchCheckpoint, UnexpectedGlobalsAreRefusedByName) {
  expect_format_error(zip_with_pickle(Pickle().global("os", "system").str("echo hi").raw("\x85R.").b),
                      "os.system");
  expect_format_error(zip_with_pickle(Pickle().global("builtins", "eval").b), "builtins.eval");
  expect_format_error(zip_with_pickle(Pickle().global("torch", "load").b), "torch.load");
  expect_format_error(zip_with_pickle(Pickle().global("torch._utils", "_rebuild_qtensor").b),
                      "_rebuild_qtensor");
  // STACK_GLOBAL is checked the same way.
  expect_format_error(zip_with_pickle(Pickle().str("subprocess").str("call").raw("\x93").b),
                      "subprocess.call");
}

TEST(TorchCheckpoint, MalformedPicklesAreFormatErrors) {
  // A memo index that was never stored.
  expect_format_error(zip_with_pickle(Pickle().raw("h\x05.").b), "memo index 5");
  expect_format_error(zip_with_pickle(Pickle().raw("j\xff\xff\xff\x7f.").b), "memo index");
  // Stack underflow, missing MARK, unknown opcode, truncation, lengths past the end.
  expect_format_error(zip_with_pickle(Pickle().raw("t.").b), "MARK");
  expect_format_error(zip_with_pickle(Pickle().raw("s.").b), "underflow");
  expect_format_error(zip_with_pickle(Pickle().raw("i.").b), "opcode 0x69");
  expect_format_error(zip_with_pickle(Pickle().raw("X\xff\xff\xff\xff").b), "truncated");
  expect_format_error(zip_with_pickle(Pickle().raw("K").b), "truncated");
  expect_format_error(zip_with_pickle(std::string("\x80\x09.")), "protocol 9");
  // A list appended into itself would make a cycle.
  expect_format_error(zip_with_pickle(Pickle()
                                          .raw("]q\x00h\x00"
                                               "a."s)
                                          .b),
                      "contain itself");
  // Mutating a container after it went into another one.
  expect_format_error(zip_with_pickle(Pickle()
                                          .raw("]q\x00h\x00\x85q\x01h\x00K\x01"
                                               "a0."s)
                                          .b),
                      "already inside");
  // Values that are not a state dict.
  expect_format_error(zip_with_pickle(Pickle().raw("K\x01.").b), "not a state dict");
  expect_format_error(zip_with_pickle(Pickle()
                                          .raw("}X\x01\x00\x00\x00"
                                               "aK\x01s."s)
                                          .b),
                      "'a' is int 1");
  // A REDUCE of a storage class, an OrderedDict called with arguments.
  expect_format_error(zip_with_pickle(Pickle().global("torch", "FloatStorage").raw(")R.").b), "cannot build");
  expect_format_error(zip_with_pickle(Pickle().global("collections", "OrderedDict").raw("K\x01\x85R.").b),
                      "OrderedDict called with arguments");
  // A persistent id that is not a storage tuple.
  expect_format_error(zip_with_pickle(Pickle().str("x").raw("Q.").b), "persistent id");
  // Extra values left on the stack at STOP, bytes after STOP.
  expect_format_error(zip_with_pickle(Pickle().raw("K\x01K\x02.").b), "STOP with 2");
  expect_format_error(zip_with_pickle(Pickle().raw("}.junk").b), "after STOP");
}

TEST(TorchCheckpoint, DeepNestingIsBounded) {
  // 100000 nested tuples (and lists) would overflow a recursive reader or destructor.
  std::string deep = "\x80\x02";
  for (int i = 0; i < 100000; ++i) deep += "(";
  deep += "K\x01";
  for (int i = 0; i < 100000; ++i) deep += "t";
  deep += ".";
  expect_format_error(zip_with_pickle(deep), "nesting deeper");
  std::string lists = "\x80\x02";
  for (int i = 0; i < 100000; ++i) lists += "]";
  for (int i = 0; i < 99999; ++i) lists += "a";
  lists += ".";
  expect_format_error(zip_with_pickle(lists), "nesting deeper");
}

TEST(TorchCheckpoint, ObjectCountIsBounded) {
  // 1.5 MB of NONE opcodes: refused before millions of objects pile up.
  std::string many = "\x80\x02" + std::string(3u << 19, 'N') + ".";
  expect_format_error(zip_with_pickle(many), "more than");
}

// ---- legacy format, hand-built ----------------------------------------------------------------

std::string legacy_file(const std::vector<TensorDesc>& ts, const std::vector<std::string>& keys,
                        const std::vector<std::pair<std::int64_t, std::string>>& blobs, bool little = true) {
  std::string b("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
  b += "\x80\x02M\xe9\x03.";
  b += Pickle()
           .raw("}(")
           .str("protocol_version")
           .integer(1001)
           .str("little_endian")
           .raw(little ? "\x88" : "\x89")
           .raw("u.")
           .b;
  b += state_dict_pickle(ts, true);
  Pickle k;
  k.raw("](");
  for (const auto& key : keys) k.str(key);
  b += k.raw("e.").b;
  for (const auto& [count, data] : blobs) b += le64(static_cast<std::uint64_t>(count)) + data;
  return b;
}

TEST(TorchCheckpoint, HandBuiltLegacyLoadsUnalignedData) {
  TempDir tmp;
  iotest::write_file(
      tmp / "l.pt",
      legacy_file({{"w", {2, 2}, {2, 1}, 1, "k1", 5}, {"v", {3}, {2}, 0, "k2", 6}}, {"k2", "k1"},
                  {{6, floats({0, 1, 2, 3, 4, 5})}, {5, floats({9, 8, 7, 6, 5})}}));
  const NamedTensors sd = io::load_torch_checkpoint(tmp / "l.pt");
  EXPECT_EQ(sd.at("w").to_vector(), (std::vector<float>{8, 7, 6, 5}));
  EXPECT_EQ(sd.at("v").to_vector(), (std::vector<float>{0, 2, 4}));
}

TEST(TorchCheckpoint, LegacyInconsistenciesAreFormatErrors) {
  const std::vector<TensorDesc> ts = {{"w", {2}, {1}, 0, "k", 4}};
  expect_format_error(legacy_file(ts, {"k"}, {{5, floats({1, 2, 3, 4, 5})}}), "holds 5 elements");
  expect_format_error(legacy_file(ts, {"k"}, {{4, floats({1, 2, 3})}}), "runs past the end of the file");
  expect_format_error(legacy_file(ts, {"k", "zz"}, {{4, floats({1, 2, 3, 4})}}),
                      "'zz' is listed but no tensor");
  expect_format_error(legacy_file(ts, {"k", "k"}, {{4, floats({1, 2, 3, 4})}, {4, floats({1, 2, 3, 4})}}),
                      "listed twice");
  expect_format_error(legacy_file(ts, {}, {}), "has no data");
  expect_format_error(legacy_file({{"w", {2}, {1}, 3, "k", 4}}, {"k"}, {{4, floats({1, 2, 3, 4})}}),
                      "past the end of storage");
  expect_format_error(legacy_file(ts, {"k"}, {{std::int64_t{1} << 61, floats({1, 2, 3, 4})}}), "holds");
  TempDir tmp;
  iotest::write_file(tmp / "be.pt", legacy_file(ts, {"k"}, {{4, floats({1, 2, 3, 4})}}, false));
  EXPECT_THROW(io::load_torch_checkpoint(tmp / "be.pt"), UnsupportedError);
  std::string bad_magic = legacy_file(ts, {"k"}, {{4, floats({1, 2, 3, 4})}});
  bad_magic[5] = 0;
  expect_format_error(bad_magic, "magic");
}

}  // namespace
