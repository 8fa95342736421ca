// The restricted unpickler alone (io/unpickler.hpp), on bytes in memory: every pickle in the input
// in turn, with the globals a checkpoint may name allowed, REDUCE and persistent ids answered by
// objects as the checkpoint loader's hooks do, and describe() over each result.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "fuzz_common.hpp"
#include "io/unpickler.hpp"

using namespace diffprobe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::single_threaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace io::detail;
  UnpicklerHooks hooks;
  hooks.allow_global = [](const std::string& m, const std::string& n) {
    return (m == "collections" && n == "OrderedDict") || (m == "torch._utils" && n == "_rebuild_tensor_v2") ||
           (m == "torch" && (n == "FloatStorage" || n == "HalfStorage" || n == "BFloat16Storage")) ||
           (m == "torch" && n == "float32");
  };
  std::int64_t handle = 0;
  hooks.reduce = [&](const PyValue& fn, const PyValue& args) -> PyPtr {
    if (fn.kind == PyKind::Global && fn.name == "OrderedDict") return make_dict();
    return make_object(fn.qualified_name() + "/" + std::to_string(args.items.size()), handle++);
  };
  hooks.persistent_load = [&](const PyValue& pid) -> PyPtr {
    return make_object("storage/" + std::to_string(pid.items.size()), handle++);
  };
  const std::span<const std::uint8_t> bytes(data, size);
  fuzz::expect_only_diffprobe_errors([&] {
    std::size_t pos = 0;
    for (int i = 0; i < 8 && pos < size; ++i) {
      const auto [value, next] =
          unpickle(bytes, pos, hooks, "fuzz", PickleLimits{.max_objects = 1 << 16, .max_depth = 64});
      if (value) (void)describe(*value);
      if (next <= pos) std::abort();  // must make progress
      pos = next;
    }
  });
  return 0;
}
