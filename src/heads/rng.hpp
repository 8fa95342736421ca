#pragma once
// A portable seeded generator: std::mt19937_64's output is fixed by the standard, but the
// standard distributions and std::shuffle are not, so we derive uniforms and shuffles ourselves
// to get the same initialisation and batch order on every platform.
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace diffprobe::heads {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : g_(seed) {}
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(g_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [0, n) without modulo bias.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t r;
    do r = g_();
    while (r >= limit);
    return r % n;
  }
  template <class T> void shuffle(std::vector<T>& v) {  // Fisher-Yates
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  std::mt19937_64 g_;
};

}  // namespace diffprobe::heads
