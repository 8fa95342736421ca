#include "diffprobe/diffusion/counter_noise.hpp"

#include <cmath>
#include <numbers>

namespace diffprobe {

void philox4x32(const std::uint32_t counter[4], const std::uint32_t key[2], std::uint32_t out[4]) noexcept {
  constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  std::uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  std::uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; ++r) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(M0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(M1) * c2;
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

void gaussian_noise(const NoiseKey& key, float* out, std::int64_t n) noexcept {
  gaussian_noise(key, out, 0, n);
}

void gaussian_noise(const NoiseKey& key, float* out_all, std::int64_t first, std::int64_t count) noexcept {
  // Key: the seed. Counter: (element pair index, sample low/high, t and draw packed).
  const std::uint32_t k[2] = {static_cast<std::uint32_t>(key.seed),
                              static_cast<std::uint32_t>(key.seed >> 32)};
  const std::uint32_t tag = (key.t & 0xFFFFu) | (key.draw << 16);
  float* const out = out_all - first;  // element i of the stream at out[i]
  const std::int64_t n = first + count;
  for (std::int64_t i = first & ~std::int64_t{1}; i < n; i += 2) {
    const std::uint32_t ctr[4] = {static_cast<std::uint32_t>(i / 2), static_cast<std::uint32_t>(key.sample),
                                  static_cast<std::uint32_t>(key.sample >> 32), tag};
    std::uint32_t r[4];
    philox4x32(ctr, k, r);
    // Two uniforms in (0, 1] from 53-bit mantissas, then Box-Muller in double.
    const double u1 =
        (static_cast<double>((static_cast<std::uint64_t>(r[0]) << 21) ^ r[1]) + 1.0) / 9007199254740992.0;
    const double u2 =
        (static_cast<double>((static_cast<std::uint64_t>(r[2]) << 21) ^ r[3]) + 1.0) / 9007199254740992.0;
    const double rad = std::sqrt(-2.0 * std::log(u1));
    const double th = 2.0 * std::numbers::pi * u2;
    if (i >= first) out[i] = static_cast<float>(rad * std::cos(th));
    if (i + 1 < n) out[i + 1] = static_cast<float>(rad * std::sin(th));
  }
}

}  // namespace diffprobe
