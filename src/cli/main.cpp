// diffprobe: diffusion U-Net features for image classification, from the command line.
#include <malloc.h>

#include <cstdio>

#include "cli/commands.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/version.hpp"

int main(int argc, char** argv) {
  // Head training allocates and frees the same large activation buffers every step. glibc's
  // default serves them with fresh mmap'd (kernel-zeroed, page-faulting) memory and trims the heap
  // back after each step, which made the attention head 2.5x slower. Keep freed memory in the heap.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  CLI::App app{"diffprobe " DIFFPROBE_VERSION_STRING ": diffusion U-Net features for image classification"};
  app.set_version_flag("--version", DIFFPROBE_VERSION_STRING);
  app.require_subcommand(1);
  // A flag given twice: the last one wins, as in most Unix tools (scripts append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  using namespace diffprobe::cli;
  std::vector<std::pair<CLI::App*, Runner>> commands;
  auto add = [&](const char* name, const char* help, Runner (*reg)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands.emplace_back(sub, reg(*sub));
  };
  add("info", "print a model's configuration and, per block, its output shape, parameters and GFLOP",
      add_info);
  add("convert", "write any supported weights file as safetensors (fp32, fp16 or bf16)", add_convert);
  add("extract", "extract (and pool) U-Net block features of a dataset into a feature file", add_extract);
  add("calibrate", "measure the int8 precision's input scales on a few images (for extract --precision int8)",
      add_calibrate);
  add("merge", "assemble the parts of a sharded extraction (OUT.parts/) into OUT", add_merge);
  add("sweep", "which block, t and pooling: a linear probe per cell of a grid, with a table and heatmap",
      add_sweep);
  add("probe", "train a head (linear, MLP, CNN, attention) on extracted features and evaluate it", add_probe);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : commands)
      if (sub->parsed()) return run();
  } catch (const diffprobe::Error& e) {
    std::fprintf(stderr, "diffprobe: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "diffprobe: out of memory\n");
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "diffprobe: internal error: %s\n", e.what());
    return 4;
  }
  return 1;
}
