#pragma once
// The error measure of every op and parity test: the worst absolute difference, relative to the
// reference's largest magnitude (at least 1, so near-zero outputs are judged absolutely),
// computed in double. A NaN on one side only, or a size mismatch, is an infinite error; NaN on
// both sides at the same place counts as agreement (tests of NaN propagation).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::test_support {

template <class A, class R>
double worst_relative_error(const std::vector<A>& ours, const std::vector<R>& ref) {
  EXPECT_EQ(ours.size(), ref.size());
  if (ours.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double err = 0.0, mag = 1.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double a = static_cast<double>(ours[i]), r = static_cast<double>(ref[i]);
    if (std::isnan(a) || std::isnan(r)) {
      if (std::isnan(a) != std::isnan(r)) return std::numeric_limits<double>::infinity();
      continue;
    }
    err = std::max(err, std::abs(a - r));
    mag = std::max(mag, std::abs(r));
  }
  return err / mag;
}

template <class R> double worst_relative_error(const Tensor& ours, const std::vector<R>& ref) {
  return worst_relative_error(ours.to_vector(), ref);
}

inline double worst_relative_error(const Tensor& ours, const Tensor& ref) {
  EXPECT_EQ(ours.shape(), ref.shape());
  if (ours.shape() != ref.shape()) return std::numeric_limits<double>::infinity();
  return worst_relative_error(ours.to_vector(), ref.to_vector());
}

}  // namespace diffprobe::test_support
