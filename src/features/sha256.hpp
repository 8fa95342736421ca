#pragma once
// SHA-256 (FIPS 180-4), for fingerprinting weights files in feature-file metadata. No crypto
// library is linked, and this is all we need of one.
#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace diffprobe::detail {

class Sha256 {
 public:
  Sha256();
  void update(std::span<const std::uint8_t> bytes);
  void update(const std::string& text) {
    update(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  }
  /// The digest; the object must not be updated afterwards.
  std::array<std::uint8_t, 32> finish();
  /// finish() as 64 lowercase hex digits.
  std::string hex();

 private:
  void block(const std::uint8_t* p);
  std::array<std::uint32_t, 8> h_;
  std::array<std::uint8_t, 64> buf_{};
  std::size_t used_ = 0;
  std::uint64_t bytes_ = 0;
};

/// SHA-256 of a file's content in lowercase hex; IoError when it cannot be read.
std::string sha256_file_hex(const std::filesystem::path& path);

}  // namespace diffprobe::detail
