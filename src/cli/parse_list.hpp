#pragma once
// Comma-separated integer lists for the CLI ("90,150", "24,19", "0/out").
#include <string>
#include <vector>

#include "core/text.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/model/unet.hpp"

namespace diffprobe::cli {

inline std::vector<std::string> split(const std::string& s, char sep = ',') { return detail::split(s, sep); }

inline std::vector<int> parse_int_list(const std::string& s, const char* flag, bool blocks = false) {
  std::vector<int> v;
  for (const auto& part : split(s)) {
    if (blocks) {
      v.push_back(parse_block(part));
      continue;
    }
    const auto n = detail::parse_integer(part, 0, 999'999'999);
    if (!n) throw ArgumentError(flag, "'" + part + "' is not a non-negative integer (in '" + s + "')");
    v.push_back(static_cast<int>(*n));
  }
  return v;
}

}  // namespace diffprobe::cli
