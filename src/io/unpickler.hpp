#pragma once
// A restricted unpickler: it understands the pickle opcodes torch.save emits (protocols 2-5
// subset) and builds a tree of plain values. It never imports or calls anything: GLOBAL names
// are checked against the caller's allow-list when read, and REDUCE / persistent ids are handed
// to caller hooks that build only what they recognise. Every length, memo index, nesting depth
// and object count is bounded, so a hostile pickle ends in FormatError, not a crash or OOM.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace diffprobe::io::detail {

struct PyValue;
using PyPtr = std::shared_ptr<PyValue>;

enum class PyKind {
  None,
  Bool,
  Int,     // fits in int64
  BigInt,  // wider integer: `str` holds its little-endian two's-complement bytes
  Float,
  Str,
  Bytes,
  Tuple,
  List,
  Dict,    // dict and OrderedDict (insertion order kept)
  Global,  // module.name, only ever an allowed one
  Object,  // something a hook built: `str` names its type, `i` is the hook's handle
};

struct PyValue {
  PyKind kind = PyKind::None;
  bool frozen = false;  // already inside another value: may no longer be mutated (no cycles)
  int depth = 0;        // nesting depth of containers below and including this one
  bool b = false;
  std::int64_t i = 0;
  double f = 0;
  std::string str;                               // Str / Bytes / BigInt bytes / Object type / Global module
  std::string name;                              // Global name
  std::vector<PyPtr> items;                      // Tuple / List
  std::vector<std::pair<PyPtr, PyPtr>> entries;  // Dict
  std::unique_ptr<std::unordered_map<std::string, std::size_t>> key_index;  // Dict: str/int key -> entry

  /// The value of str key `key` of a Dict, or nullptr.
  const PyValue* find(const std::string& key) const;

  bool is_int() const noexcept { return kind == PyKind::Int; }
  bool is_str() const noexcept { return kind == PyKind::Str; }
  bool is_tuple() const noexcept { return kind == PyKind::Tuple; }
  bool is_object(const char* type) const { return kind == PyKind::Object && str == type; }
  std::string qualified_name() const { return str + "." + name; }
};

/// Short description of a value for error messages ("tuple of 3", "str 'abc'", ...).
std::string describe(const PyValue& v);

struct UnpicklerHooks {
  /// Whether GLOBAL module.name may be referenced at all.
  std::function<bool(const std::string& module, const std::string& name)> allow_global;
  /// REDUCE of an allowed global with a tuple of arguments.
  std::function<PyPtr(const PyValue& callable, const PyValue& args)> reduce;
  /// BINPERSID: the persistent id (e.g. torch's storage tuple) to the object it stands for.
  std::function<PyPtr(const PyValue& pid)> persistent_load;
};

struct PickleLimits {
  std::size_t max_objects = std::size_t{1} << 20;  // values, stack entries, memo entries, marks
  int max_depth = 64;
};

/// Unpickles one pickle starting at `data[start]`; returns the value and the offset just past
/// STOP. `where` (usually the file name) prefixes every error.
std::pair<PyPtr, std::size_t> unpickle(std::span<const std::uint8_t> data, std::size_t start,
                                       const UnpicklerHooks& hooks, const std::string& where,
                                       const PickleLimits& limits = {});

/// Helpers for hooks.
PyPtr make_dict();
PyPtr make_object(const std::string& type, std::int64_t handle);

}  // namespace diffprobe::io::detail
