#include "diffprobe/data/dataset.hpp"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <limits>

#include "diffprobe/core/error.hpp"
#include "diffprobe/core/threads.hpp"

namespace diffprobe::data {

Tensor Dataset::images(std::int64_t begin, std::int64_t end, std::vector<BadSample>* bad) const {
  const std::int64_t n = size();
  if (begin < 0 || end < begin || end > n)
    throw ArgumentError("Dataset::images", "range [" + std::to_string(begin) + ", " + std::to_string(end) +
                                               ") is not inside [0, " + std::to_string(n) + ")");
  std::vector<std::int64_t> idx(static_cast<std::size_t>(end - begin));
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = begin + static_cast<std::int64_t>(i);
  return images_at(idx, bad);
}

Tensor Dataset::images_at(std::span<const std::int64_t> indices, std::vector<BadSample>* bad) const {
  const std::int64_t n = size();
  for (const std::int64_t i : indices)
    if (i < 0 || i >= n)
      throw ArgumentError("Dataset::images_at",
                          "index " + std::to_string(i) + " is outside [0, " + std::to_string(n) + ")");
  const InputSpec s = spec();
  const std::int64_t count = static_cast<std::int64_t>(indices.size());
  Tensor out = Tensor::empty({count, s.channels, s.size, s.size});
  float* p = out.data<float>();
  const std::int64_t per = static_cast<std::int64_t>(s.channels) * s.size * s.size;
  const int threads = threads_ > 0 ? threads_ : default_threads();
  // One sample: with `bad`, a decoder's error zeroes its slot and is recorded (in batch order).
  std::vector<std::string> errors(bad ? static_cast<std::size_t>(count) : 0);
  auto load_one = [&](std::int64_t i) {
    float* slot = p + i * per;
    if (!bad) return load(indices[static_cast<std::size_t>(i)], slot);
    try {
      load(indices[static_cast<std::size_t>(i)], slot);
    } catch (const Error& e) {
      std::fill_n(slot, per, 0.0f);
      errors[static_cast<std::size_t>(i)] = e.what();
      if (errors[static_cast<std::size_t>(i)].empty()) errors[static_cast<std::size_t>(i)] = "unreadable";
    }
  };
  auto report_bad = [&] {
    if (!bad) return;
    for (std::int64_t i = 0; i < count; ++i)
      if (!errors[static_cast<std::size_t>(i)].empty())
        bad->push_back({i, indices[static_cast<std::size_t>(i)], errors[static_cast<std::size_t>(i)]});
  };
  if (!parallel_load() || count < 2 || threads < 2) {
    for (std::int64_t i = 0; i < count; ++i) load_one(i);
    report_bad();
    return out;
  }
  // Exceptions cannot leave an OpenMP region: keep the one of the first failing sample, so the
  // error does not depend on thread timing.
  std::exception_ptr error;
  std::int64_t error_at = std::numeric_limits<std::int64_t>::max();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t i = 0; i < count; ++i) {
    try {
      load_one(i);
    } catch (...) {
#pragma omp critical(diffprobe_dataset_error)
      if (i < error_at) {
        error_at = i;
        error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  report_bad();
  return out;
}

}  // namespace diffprobe::data
