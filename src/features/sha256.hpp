#pragma once
// SHA-256 through OpenSSL's libcrypto (it uses the CPU's SHA instructions where there are some),
// for fingerprinting weights files and checking feature-file parts.
#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace diffprobe::detail {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::span<const std::uint8_t> bytes);
  void update(const void* data, std::size_t bytes) {
    update(std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(data), bytes));
  }
  void update(const std::string& text) { update(text.data(), text.size()); }
  /// The digest; the object must not be updated afterwards.
  std::array<std::uint8_t, 32> finish();
  /// finish() as 64 lowercase hex digits.
  std::string hex();

 private:
  void* ctx_;  // EVP_MD_CTX
};

/// SHA-256 of a file's content in lowercase hex; IoError when it cannot be read.
std::string sha256_file_hex(const std::filesystem::path& path);
/// SHA-256 of bytes [offset, end of file).
std::string sha256_file_hex(const std::filesystem::path& path, std::uint64_t offset);

}  // namespace diffprobe::detail
