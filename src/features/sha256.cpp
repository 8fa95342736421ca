#include "features/sha256.hpp"

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "diffprobe/core/error.hpp"

namespace diffprobe::detail {
namespace {

EVP_MD_CTX* as_ctx(void* p) { return static_cast<EVP_MD_CTX*>(p); }

void check(int ok, const char* what) {
  if (ok != 1) throw UnsupportedError("Sha256", std::string("OpenSSL ") + what + " failed");
}

}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_) throw std::bad_alloc();
  check(EVP_DigestInit_ex(as_ctx(ctx_), EVP_sha256(), nullptr), "EVP_DigestInit_ex");
}

Sha256::~Sha256() { EVP_MD_CTX_free(as_ctx(ctx_)); }

void Sha256::update(std::span<const std::uint8_t> bytes) {
  if (!bytes.empty()) check(EVP_DigestUpdate(as_ctx(ctx_), bytes.data(), bytes.size()), "EVP_DigestUpdate");
}

std::array<std::uint8_t, 32> Sha256::finish() {
  std::array<std::uint8_t, 32> out{};
  unsigned len = 0;
  check(EVP_DigestFinal_ex(as_ctx(ctx_), out.data(), &len), "EVP_DigestFinal_ex");
  return out;
}

std::string Sha256::hex() {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (const std::uint8_t b : finish()) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

std::string sha256_file_hex(const std::filesystem::path& path) { return sha256_file_hex(path, 0); }

std::string sha256_file_hex(const std::filesystem::path& path, std::uint64_t offset) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw IoError(path.string(), std::string("cannot open: ") + std::strerror(errno));
  if (offset > 0 && ::fseeko(f.get(), static_cast<off_t>(offset), SEEK_SET) != 0)
    throw IoError(path.string(), std::string("cannot seek: ") + std::strerror(errno));
  Sha256 h;
  std::vector<std::uint8_t> buf(1 << 20);
  for (;;) {
    const std::size_t n = std::fread(buf.data(), 1, buf.size(), f.get());
    if (n > 0) h.update(std::span<const std::uint8_t>(buf.data(), n));
    if (n < buf.size()) {
      if (std::ferror(f.get())) throw IoError(path.string(), "read failed");
      break;
    }
  }
  return h.hex();
}

}  // namespace diffprobe::detail
