#pragma once
// What a model takes per image: the number of channels and the (square) side length.
#include <string>

#include "diffprobe/core/shape.hpp"

namespace diffprobe::data {

struct InputSpec {
  int channels = 3;
  int size = 256;

  /// From a model's input shape: [1, C, S, S] (FeatureExtractor::input_spec()) or [C, S, S].
  /// ArgumentError when the shape is not square or has another rank.
  static InputSpec from_shape(const Shape& shape);
  /// ArgumentError unless channels >= 1 and size >= 1.
  void validate(const char* where) const;
  std::string str() const;  // "3x256x256"

  friend bool operator==(const InputSpec&, const InputSpec&) = default;
};

}  // namespace diffprobe::data
