#pragma once
// Runs the `diffprobe` program under test (DIFFPROBE_CLI, set by tests/CMakeLists.txt) with a
// shell argument string and captures its exit status and output: shared by the CLI tests.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#ifndef DIFFPROBE_CLI
#error "DIFFPROBE_CLI must name the diffprobe program"
#endif

namespace cli_test {

struct Result {
  int code;
  std::string out;  // stdout and stderr together
};

/// `text` in single quotes, for a shell command line (paths with spaces).
inline std::string quote(const std::string& text) {
  std::string r(1, '\'');
  r += text;
  r += '\'';
  return r;
}

inline Result run(const std::string& args) {
  const std::string cmd = std::string(DIFFPROBE_CLI) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace cli_test
