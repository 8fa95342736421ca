#include "diffprobe/data/input_spec.hpp"

#include "diffprobe/core/error.hpp"

namespace diffprobe::data {

InputSpec InputSpec::from_shape(const Shape& shape) {
  const int r = shape.rank();
  if ((r != 3 && r != 4) || (r == 4 && shape[0] != 1) || shape[r - 1] != shape[r - 2] || shape[r - 1] < 1 ||
      shape[r - 3] < 1)
    throw ArgumentError("InputSpec::from_shape",
                        "expected a model input shape [1, C, S, S] or [C, S, S], got " + shape.str());
  InputSpec s{static_cast<int>(shape[r - 3]), static_cast<int>(shape[r - 1])};
  s.validate("InputSpec::from_shape");
  return s;
}

void InputSpec::validate(const char* where) const {
  if (channels < 1 || size < 1 || channels > 4096 || size > 65536)
    throw ArgumentError(where, "input spec " + str() + " needs 1 <= channels <= 4096 and 1 <= size <= 65536");
}

std::string InputSpec::str() const {
  return std::to_string(channels) + "x" + std::to_string(size) + "x" + std::to_string(size);
}

}  // namespace diffprobe::data
