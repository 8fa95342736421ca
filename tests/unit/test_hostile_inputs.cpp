// Regression inputs for sizes read from untrusted files: each once overflowed or asked for an
// absurd allocation; each must now be a typed error before anything large is computed or
// allocated. (Decompression bombs are in test_data_image.cpp.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "diffprobe/core/error.hpp"
#include "diffprobe/core/shape.hpp"
#include "diffprobe/core/tensor.hpp"
#include "diffprobe/heads/head_spec.hpp"
#include "diffprobe/io/npy.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/model/unet_config.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

fs::path write(const std::string& name, const std::string& bytes) {
  const fs::path d = fs::temp_directory_path() / ("diffprobe_test_hostile_" + std::to_string(::getpid()));
  fs::create_directories(d);
  std::ofstream(d / name, std::ios::binary) << bytes;
  return d / name;
}

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * i));
  return s;
}

}  // namespace

TEST(HostileInputs, EmptyTensorsWithHugeOtherDimensionsAreRefused) {
  // (0, 2^32, 2^32) holds no element, but its strides overflow int64.
  EXPECT_THROW(Shape({0, std::int64_t{1} << 32, std::int64_t{1} << 32}), ShapeError);
  EXPECT_THROW(Shape({std::int64_t{1} << 32, std::int64_t{1} << 32}), ShapeError);
  EXPECT_NO_THROW(Shape({0, std::int64_t{1} << 40, 4}));
  EXPECT_EQ(Shape({0, std::int64_t{1} << 40, 4}).numel(), 0);

  std::string npy_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }";
  npy_header += std::string(64 - (10 + npy_header.size() + 1) % 64, ' ') + "\n";
  std::string npy = "\x93NUMPY\x01";
  npy += '\0';
  npy += static_cast<char>(npy_header.size() & 0xff);
  npy += static_cast<char>(npy_header.size() >> 8);
  npy += npy_header;
  const fs::path p = write("zero.npy", npy);
  try {
    (void)io::load_npy(p);
    FAIL() << "loaded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("zero.npy"), std::string::npos) << e.what();
  }

  std::string json = R"({"t":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})";
  json += std::string((8 - json.size() % 8) % 8, ' ');
  const fs::path st = write("zero.safetensors", le64(json.size()) + json);
  EXPECT_THROW((void)io::load_safetensors(st), FormatError);
}

TEST(HostileInputs, HeadSpecsAskingForAbsurdModelsAreRefusedBeforeBuilding) {
  HeadSpec s;
  s.kind = HeadKind::Linear;
  s.num_classes = 10;
  s.inputs = {Shape{std::int64_t{1} << 20, std::int64_t{1} << 10}};  // 2^30 values per sample
  EXPECT_THROW(s.validate(), ConfigError);
  s.inputs = {Shape{1 << 20}};
  s.num_classes = 1 << 12;  // a 2^32-weight linear layer
  EXPECT_THROW(s.validate(), ConfigError);
  s.num_classes = 1000;
  EXPECT_NO_THROW(s.validate());  // 1,048,576 x 1,000: large, allowed
  s.kind = HeadKind::MLP;
  s.hidden = {1 << 16, 1 << 16};  // 2^32 weights between the two hidden layers
  s.inputs = {Shape{16}};
  EXPECT_THROW(s.validate(), ConfigError);
}

TEST(HostileInputs, UNetConfigsThatWouldOverflowAreRefused) {
  auto refused = [](const std::string& json) {
    try {
      UNetConfig::from_json(json).validate();
    } catch (const ConfigError&) {
      return true;
    }
    return false;
  };
  // 40 levels used to shift 1 by 39 bits; "1e20" and 1e300 reached int conversions.
  std::string forty = "1";
  for (int i = 1; i < 40; ++i) forty += ",1";
  EXPECT_TRUE(refused(R"({"image_size": 64, "num_channels": 32, "channel_mult": ")" + forty + "\"}"));
  EXPECT_TRUE(refused(
      R"({"image_size": 64, "num_channels": 32, "channel_mult": "1,2", "attention_resolutions": "1e20"})"));
  EXPECT_TRUE(refused(R"({"image_size": 64, "num_channels": 32, "channel_mult": "1e300"})"));
  EXPECT_TRUE(refused(R"({"image_size": 64, "num_channels": 536870912, "channel_mult": "1,2"})"));
  EXPECT_TRUE(refused(R"({"image_size": 1048576, "num_channels": 32, "channel_mult": "1,2"})"));
  EXPECT_FALSE(refused(
      R"({"image_size": 64, "num_channels": 32, "channel_mult": "1,2", "attention_resolutions": "16"})"));
  for (const auto& name : UNetConfig::preset_names())
    EXPECT_NO_THROW(UNetConfig::preset(name).validate()) << name;
}

TEST(HostileInputs, EmptyTensorsFromEmptyVectors) {
  // An empty span's data() may be null: memcpy(dst, nullptr, 0) is undefined (UBSan under the
  // fuzz and sanitize presets; found by the fuzz seed generator).
  const Tensor t = Tensor::from_vector(Shape{0, 3}, std::vector<float>{});
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(Tensor::from_vector(Shape{0}, std::span<const float>()).numel(), 0);
}

TEST(HostileInputs, HeadSpecIntegersMustBeJsonIntegersInRange) {
  // get<int>() of 1e300 was a float-to-int overflow (undefined), and 2^32 + 3 silently became 3
  // (found by fuzz_head).
  HeadSpec s;
  s.kind = HeadKind::Linear;
  s.num_classes = 3;
  s.inputs = {Shape{6}};
  const std::string ok = s.to_json();
  EXPECT_EQ(HeadSpec::from_json(ok).num_classes, 3);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string j = ok;
    const auto at = j.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return j.replace(at, from.size(), to);
  };
  EXPECT_THROW(HeadSpec::from_json(with("\"num_classes\":3", "\"num_classes\":1e300")), FormatError);
  EXPECT_THROW(HeadSpec::from_json(with("\"num_classes\":3", "\"num_classes\":4294967299")), FormatError);
  EXPECT_THROW(HeadSpec::from_json(with("\"num_classes\":3", "\"num_classes\":3.0")), FormatError);
  EXPECT_THROW(HeadSpec::from_json(with("[[6]]", "[[6.5e30]]")), FormatError);
  EXPECT_THROW(HeadSpec::from_json(with("[[6]]", "[[18446744073709551615]]")), FormatError);
}

TEST(HostileInputs, UNetConfigIntegersOutsideInt32AreRefusedNotTruncated) {
  // get<int>() truncated: num_channels 2^32 + 32 became 32 and passed validate().
  EXPECT_THROW(UNetConfig::from_json(R"({"image_size": 64, "num_channels": 4294967328})"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json(R"({"image_size": 64, "num_res_blocks": -4294967294})"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json(R"({"image_size": 18446744073709551615})"), ConfigError);
  EXPECT_EQ(UNetConfig::from_json(R"({"image_size": 64, "num_channels": 32})").num_channels, 32);
}
