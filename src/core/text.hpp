#pragma once
// The one place that splits lists and reads integers from text (flags, metadata, configs, file
// names): digits only, range-checked, never an exception other than the caller's typed error.
#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace diffprobe::detail {

/// Splits at `sep`, keeping empty parts: "a,,b" -> {"a", "", "b"}, "" -> {""}.
inline std::vector<std::string> split(std::string_view text, char sep = ',') {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = text.find(sep, start);
    out.emplace_back(
        text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return out;
    start = end + 1;
  }
}

/// A decimal integer in [min, max], written with digits only (and a leading '-' when min < 0);
/// nullopt for anything else (empty, signs, spaces, other characters, out of range).
inline std::optional<long long> parse_integer(std::string_view text, long long min, long long max) {
  if (text.empty() || text.front() == '+' || (text.front() == '-' && min >= 0)) return std::nullopt;
  long long v = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size() || v < min || v > max) return std::nullopt;
  return v;
}

/// "1,2,3".
inline std::string join(const std::vector<int>& values, char sep = ',') {
  std::string s;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) s += sep;
    s += std::to_string(values[i]);
  }
  return s;
}

}  // namespace diffprobe::detail
