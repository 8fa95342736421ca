#pragma once
// Thread-count control. Every CPU op (ours and oneDNN's) runs on OpenMP, so one setting
// governs all of them. The default is all cores; callers override it per call through
// ExecContext, or globally here.
namespace diffprobe {

/// Logical cores available to this process.
int hardware_threads() noexcept;
/// The default thread count for ops that are not given one (initially hardware_threads()).
int default_threads() noexcept;
void set_default_threads(int n);  // n >= 1, else ArgumentError

/// Sets the OpenMP thread count for the current scope and restores it on exit.
class ThreadScope {
 public:
  explicit ThreadScope(int threads);  // threads <= 0 means default_threads()
  ~ThreadScope();
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;
  int threads() const noexcept { return threads_; }

 private:
  int threads_;
  int previous_;
};

}  // namespace diffprobe
