#pragma once
// Comma-separated integer lists for the CLI ("90,150", "24,19", "0/out").
#include <string>
#include <vector>

#include "diffprobe/core/error.hpp"
#include "diffprobe/model/unet.hpp"

namespace diffprobe::cli {

inline std::vector<std::string> split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

inline std::vector<int> parse_int_list(const std::string& s, const char* flag, bool blocks = false) {
  std::vector<int> v;
  for (const auto& part : split(s)) {
    if (blocks) {
      v.push_back(parse_block(part));
      continue;
    }
    if (part.empty() || part.size() > 9 || part.find_first_not_of("0123456789") != std::string::npos)
      throw ArgumentError(flag, "'" + part + "' is not a non-negative integer (in '" + s + "')");
    v.push_back(std::stoi(part));
  }
  return v;
}

}  // namespace diffprobe::cli
