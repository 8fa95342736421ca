#include "diffprobe/core/threads.hpp"

#include <omp.h>

#include <atomic>
#include <string>
#include <thread>

#include "diffprobe/core/error.hpp"

namespace diffprobe {
namespace {
std::atomic<int> g_default_threads{0};
}

int hardware_threads() noexcept {
  const int n = omp_get_num_procs();
  return n > 0 ? n : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int default_threads() noexcept {
  const int n = g_default_threads.load();
  return n > 0 ? n : hardware_threads();
}

void set_default_threads(int n) {
  if (n < 1)
    throw ArgumentError("set_default_threads", "thread count must be >= 1, got " + std::to_string(n));
  g_default_threads.store(n);
}

ThreadScope::ThreadScope(int threads)
    : threads_(threads > 0 ? threads : default_threads()), previous_(omp_get_max_threads()) {
  omp_set_num_threads(threads_);
}

ThreadScope::~ThreadScope() { omp_set_num_threads(previous_); }

}  // namespace diffprobe
