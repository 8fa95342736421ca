#pragma once
// Reproducible Gaussian noise from a counter-based generator (Philox4x32-10). Each value is a
// pure function of (seed, sample index in the dataset, t, draw, element index), so a feature
// never depends on batch size, thread count, shard or device.
#include <cstdint>

namespace diffprobe {

struct NoiseKey {
  std::uint64_t seed = 0;
  std::uint64_t sample = 0;  // the sample's index in its dataset
  std::uint32_t t = 0;
  std::uint32_t draw = 0;
};

/// Philox4x32 with 10 rounds (Salmon et al., SC'11): 4 random 32-bit words per counter.
void philox4x32(const std::uint32_t counter[4], const std::uint32_t key[2], std::uint32_t out[4]) noexcept;

/// Fills `out` (f32, n values) with standard normal noise for `key`, element i from counter i
/// (Box-Muller on two 32-bit uniforms in (0, 1]).
void gaussian_noise(const NoiseKey& key, float* out, std::int64_t n) noexcept;
/// Elements [first, first + n) of the same stream, so one sample's noise can be made in pieces,
/// in parallel, with the same values.
void gaussian_noise(const NoiseKey& key, float* out, std::int64_t first, std::int64_t n) noexcept;

}  // namespace diffprobe
