// `diffprobe merge`: assemble a sharded extraction's parts (OUT.parts/) into OUT.
#include <fmt/core.h>

#include "cli/commands.hpp"
#include "diffprobe/features/extraction_job.hpp"

namespace diffprobe::cli {

Runner add_merge(CLI::App& app) {
  struct Opts {
    std::string out;
    bool keep_parts = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--out", o->out, "the output the shards wrote (their parts are in OUT.parts/)")->required();
  app.add_flag("--keep-parts", o->keep_parts, "keep OUT.parts/ after assembling OUT");
  return [o]() {
    const auto parts = complete_parts(o->out);
    if (merge_parts(o->out, o->keep_parts))
      fmt::print(stderr, "merged {} parts (checksums verified) into {}\n", parts.size(), o->out);
    else
      fmt::print(stderr, "{} was already assembled from these parts\n", o->out);
    return 0;
  };
}

}  // namespace diffprobe::cli
