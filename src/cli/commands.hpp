#pragma once
// The `diffprobe` command's subcommands. Each registers its flags on the CLI11 app and returns
// the function that runs it; docs/cli.md documents the contract.
#include <CLI/CLI.hpp>
#include <functional>

namespace diffprobe::cli {

using Runner = std::function<int()>;

Runner add_info(CLI::App& app);
Runner add_convert(CLI::App& app);
Runner add_extract(CLI::App& app);
Runner add_probe(CLI::App& app);

}  // namespace diffprobe::cli
