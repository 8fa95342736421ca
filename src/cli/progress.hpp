#pragma once
// Progress reporting for long runs: a redrawn bar with throughput on a terminal, plain
// periodic lines when stderr is not a TTY (logs, CI).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace diffprobe::cli {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::string unit = "img")
      : label_(std::move(label)),
        unit_(std::move(unit)),
        total_(total),
        tty_(isatty(STDERR_FILENO) != 0),
        start_(std::chrono::steady_clock::now()),
        last_(start_) {}

  void update(std::int64_t done) {
    const auto now = std::chrono::steady_clock::now();
    const double since_last = std::chrono::duration<double>(now - last_).count();
    const bool finished = done >= total_;
    // Redraw at most 10x a second on a terminal; a line every 10 s otherwise.
    if (!finished && since_last < (tty_ ? 0.1 : 10.0)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? static_cast<double>(done - first_) / secs : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    const int pct = total_ > 0 ? static_cast<int>(100 * done / total_) : 100;
    if (tty_) {
      const int width = 28, fill = total_ > 0 ? static_cast<int>(width * done / total_) : width;
      std::fprintf(stderr, "\r%s [%s%s] %3d%% %lld/%lld %.1f %s/s ETA %.0fs  ", label_.c_str(),
                   std::string(static_cast<std::size_t>(fill), '#').c_str(),
                   std::string(static_cast<std::size_t>(width - fill), '.').c_str(), pct,
                   static_cast<long long>(done), static_cast<long long>(total_), rate, unit_.c_str(), eta);
      if (finished) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "%s: %lld/%lld (%d%%) %.1f %s/s, ETA %.0f s\n", label_.c_str(),
                   static_cast<long long>(done), static_cast<long long>(total_), pct, rate, unit_.c_str(),
                   eta);
    }
    std::fflush(stderr);
  }
  /// Work already done before this run (resume): excluded from the throughput.
  void set_resumed(std::int64_t done) { first_ = done; }

 private:
  std::string label_, unit_;
  std::int64_t total_, first_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace diffprobe::cli
