#include "diffprobe/io/safetensors.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "io/atomic_file.hpp"
#include "io/bytes.hpp"
#include "io/mapped_file.hpp"
#include "io/safetensors_writer.hpp"

namespace diffprobe::io {
namespace {

using detail::SrcType;
// A plain (sorted-map) JSON object: ordered_json looks keys up linearly, which a hostile header
// with millions of names would turn into a quadratic parse. Tensors are returned in the order
// of their data in the file instead.
using Json = nlohmann::json;

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit
constexpr std::size_t kMaxHeaderTokens = 4u << 20;     // bounds the parsed JSON's memory
constexpr int kMaxHeaderDepth = 16;

struct DTypeName {
  const char* name;
  SrcType type;
};
constexpr DTypeName kDTypes[] = {
    {"F32", SrcType::F32}, {"F16", SrcType::F16}, {"BF16", SrcType::BF16}, {"F64", SrcType::F64},
    {"I64", SrcType::I64}, {"I32", SrcType::I32}, {"I16", SrcType::I16},   {"I8", SrcType::I8},
    {"U8", SrcType::U8},   {"U16", SrcType::U16}, {"BOOL", SrcType::Bool},
};

// Refuses headers that would parse into something huge or deeply nested before the JSON parser
// sees them (strings are skipped, so names may contain any bracket).
void precheck_json(const std::string& where, std::string_view s) {
  bool in_str = false, escaped = false;
  int depth = 0;
  std::size_t tokens = 0;
  for (const char c : s) {
    if (in_str) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_str = false;
      continue;
    }
    if (c == '"') {
      in_str = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxHeaderDepth)
        throw FormatError(where, "safetensors header nests deeper than 16 levels");
      ++tokens;
    } else if (c == '}' || c == ']') {
      --depth;
    } else if (c == ',') {
      ++tokens;
    }
    if (tokens > kMaxHeaderTokens) throw FormatError(where, "safetensors header has too many entries");
  }
}

struct Entry {
  std::string name;
  SrcType type;
  std::vector<std::int64_t> shape;
  std::uint64_t begin, end;
};

}  // namespace

NamedTensors load_safetensors(const std::filesystem::path& path, FileAccess access) {
  const auto file = detail::MappedFile::open(path, access);
  const std::string& where = file->name();
  auto fail = [&](const std::string& why) -> FormatError {
    return FormatError(where, "safetensors: " + why);
  };
  const std::uint64_t size = file->size();
  if (size < 8)
    throw fail("file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  const std::uint64_t n = detail::load_le<std::uint64_t>(file->data());
  if (n > size - 8)
    throw fail("header length " + std::to_string(n) + " is larger than the rest of the file (" +
               std::to_string(size - 8) + " bytes)");
  if (n > kMaxHeaderBytes) throw fail("header length " + std::to_string(n) + " exceeds the 100 MB limit");
  const std::string_view text(reinterpret_cast<const char*>(file->data() + 8), static_cast<std::size_t>(n));
  if (text.empty() || text.front() != '{') throw fail("header does not start with '{'");
  precheck_json(where, text);
  Json header;
  try {
    header = Json::parse(text);
  } catch (const Json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail("header is not a JSON object");

  NamedTensors out;
  std::vector<Entry> entries;
  const std::uint64_t data_size = size - 8 - n;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) throw fail("__metadata__ is not an object");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string()) throw fail("__metadata__ value of '" + k + "' is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    // The binding copied into a plain variable: clang before 16 cannot capture structured bindings.
    const std::string& tensor_name = name;
    auto bad = [&](const std::string& why) { return fail("tensor '" + tensor_name + "': " + why); };
    if (!info.is_object()) throw bad("entry is not an object");
    for (const auto& [k, v] : info.items())
      if (k != "dtype" && k != "shape" && k != "data_offsets") throw bad("unexpected field '" + k + "'");
    if (!info.contains("dtype") || !info["dtype"].is_string()) throw bad("missing or non-string dtype");
    if (!info.contains("shape") || !info["shape"].is_array()) throw bad("missing or non-array shape");
    if (!info.contains("data_offsets") || !info["data_offsets"].is_array() ||
        info["data_offsets"].size() != 2)
      throw bad("data_offsets must be an array of two offsets");
    Entry e;
    e.name = name;
    const std::string dt = info["dtype"].get<std::string>();
    const auto it = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                                 [&](const DTypeName& d) { return dt == d.name; });
    if (it == std::end(kDTypes)) throw bad("unsupported dtype '" + dt + "'");
    e.type = it->type;
    if (info["shape"].size() > static_cast<std::size_t>(Shape::kMaxRank)) throw bad("rank exceeds 8");
    std::int64_t numel = 1;
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) throw bad("shape entries must be non-negative integers");
      const auto v = d.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(INT64_MAX) ||
          !detail::checked_mul(numel, static_cast<std::int64_t>(v), numel))
        throw bad("shape is absurdly large");
      e.shape.push_back(static_cast<std::int64_t>(v));
    }
    for (const auto& o : info["data_offsets"])
      if (!o.is_number_unsigned()) throw bad("data_offsets must be non-negative integers");
    e.begin = info["data_offsets"][0].get<std::uint64_t>();
    e.end = info["data_offsets"][1].get<std::uint64_t>();
    if (e.begin > e.end) throw bad("data_offsets are reversed");
    if (e.end > data_size)
      throw bad("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                ") run past the end of the data (" + std::to_string(data_size) + " bytes)");
    std::int64_t bytes = 0;
    if (!detail::checked_mul(numel, static_cast<std::int64_t>(detail::src_type_size(e.type)), bytes) ||
        static_cast<std::uint64_t>(bytes) != e.end - e.begin)
      throw bad("shape and dtype need " + std::to_string(bytes) + " bytes but data_offsets span " +
                std::to_string(e.end - e.begin));
    entries.push_back(std::move(e));
  }

  // The tensors must tile the data exactly: no overlap, no gap, nothing left over.
  std::vector<const Entry*> order;
  for (const auto& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    if (a->begin != b->begin) return a->begin < b->begin;
    return a->end != b->end ? a->end < b->end : a->name < b->name;
  });
  std::uint64_t cursor = 0;
  for (const Entry* e : order) {
    if (e->begin != cursor)
      throw fail("tensor '" + e->name + "' starts at " + std::to_string(e->begin) +
                 " but the previous one ends at " + std::to_string(cursor) +
                 (e->begin < cursor ? " (overlap)" : " (gap)"));
    cursor = e->end;
  }
  if (cursor != data_size)
    throw fail("the tensors cover " + std::to_string(cursor) + " of " + std::to_string(data_size) +
               " data bytes");

  std::uint8_t* data = file->data() + 8 + n;
  for (const Entry* ep : order) {
    const Entry& e = *ep;
    Shape shape;
    try {
      shape = Shape(std::span<const std::int64_t>(e.shape));
    } catch (const ShapeError& err) {
      throw FormatError(where, "tensor '" + e.name + "': " + err.why());
    }
    const DType dt = detail::loaded_dtype(e.type);
    std::uint8_t* p = data + e.begin;
    const std::size_t es = detail::src_type_size(e.type);
    if (shape.numel() > 0 && detail::is_native(e.type) && reinterpret_cast<std::uintptr_t>(p) % es == 0) {
      out.set(e.name, Tensor::view_of(p, shape, dt, Layout::Contiguous, Device::cpu(), file));
    } else {
      Tensor t = Tensor::empty(shape, dt);
      std::vector<std::int64_t> stride(e.shape.size());
      std::int64_t s = 1;
      for (std::size_t d = e.shape.size(); d-- > 0;) {
        stride[d] = s;
        s *= e.shape[d];
      }
      detail::gather_strided(p, e.type, e.shape, stride, t.raw());
      out.set(e.name, std::move(t));
    }
  }
  return out;
}

void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors, DType store_float_as) {
  const char* where = "save_safetensors";
  if (!is_floating(store_float_as))
    throw ArgumentError(where, "floating tensors can be stored as f32, f16 or bf16, not " +
                                   std::string(dtype_name(store_float_as)));
  std::vector<detail::SafetensorsEntry> entries;
  std::vector<const Tensor*> data;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) throw ArgumentError(where, "tensor '" + name + "' is undefined");
    entries.push_back({name, is_floating(t.dtype()) ? store_float_as : t.dtype(), t.shape().vec()});
    data.push_back(&t);
  }
  detail::write_safetensors(path, tensors.metadata, entries, [&](std::size_t i, detail::AtomicFile& f) {
    const Tensor c = detail::stored_copy(*data[i], entries[i].dtype);
    f.write(c.raw(), c.nbytes());
  });
}

namespace detail {

Tensor stored_copy(const Tensor& t, DType dtype) {
  Tensor c = t.device().is_cpu() ? t : t.to_device(Device::cpu());
  if (c.layout() != Layout::Contiguous) c = c.to_layout(Layout::Contiguous);
  if (c.dtype() != dtype) c = c.to_dtype(dtype);
  return c;
}

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

std::string write_safetensors_header(AtomicFile& f, const std::map<std::string, std::string>& metadata,
                                     const std::vector<SafetensorsEntry>& entries) {
  // Insertion-ordered: the header lists the tensors in the order of their data.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const auto& e : entries) {
    if (e.name == "__metadata__")
      throw ArgumentError("save_safetensors", "'__metadata__' cannot name a tensor");
    std::uint64_t numel = 1;
    for (const auto d : e.shape) numel *= static_cast<std::uint64_t>(d);
    const std::uint64_t bytes = numel * dtype_size(e.dtype);
    header[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::uint8_t len[8];
  store_le<std::uint64_t>(len, text.size());
  f.write(len, 8);
  f.write(text.data(), text.size());
  return text;
}

}  // namespace detail

}  // namespace diffprobe::io
