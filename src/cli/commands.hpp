#pragma once
// The `diffprobe` command's subcommands. Each registers its flags on the CLI11 app and returns
// the function that runs it; docs/cli.md documents the contract.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <functional>
#include <string>

namespace diffprobe::cli {

using Runner = std::function<int()>;

/// A numeric flag's lower bound, checked while parsing (before any file is read), with a message
/// CLI11 prefixes by the flag's name: "--threads: must be >= 0, got -1". A value that is not a
/// number passes through to CLI11's own conversion error.
inline CLI::Validator at_least(long long min) {
  return CLI::Validator(
      [min](std::string& text) -> std::string {
        char* end = nullptr;
        const long long v = std::strtoll(text.c_str(), &end, 10);
        if (end == text.c_str() || *end != '\0' || v >= min) return {};
        return "must be >= " + std::to_string(min) + ", got " + text;
      },
      "INT>=" + std::to_string(min));
}

Runner add_info(CLI::App& app);
Runner add_convert(CLI::App& app);
Runner add_extract(CLI::App& app);
Runner add_calibrate(CLI::App& app);
Runner add_probe(CLI::App& app);
Runner add_merge(CLI::App& app);
Runner add_sweep(CLI::App& app);

}  // namespace diffprobe::cli
