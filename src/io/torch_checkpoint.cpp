#include "diffprobe/io/torch_checkpoint.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <optional>
#include <unordered_map>

#include "diffprobe/io/safetensors.hpp"
#include "io/bytes.hpp"
#include "io/mapped_file.hpp"
#include "io/unpickler.hpp"
#include "io/zip_reader.hpp"

namespace diffprobe::io {
namespace {

using detail::PyKind;
using detail::PyPtr;
using detail::PyValue;
using detail::SrcType;

// pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2): PROTO 2, LONG1 of 10 bytes.
constexpr std::array<std::uint8_t, 14> kLegacyMagicPickle = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                                             0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
constexpr std::int64_t kLegacyProtocol = 1001;

struct StorageType {
  const char* name;
  std::optional<SrcType> type;  // nullopt: a storage class we recognise but cannot load
};

// Every storage class torch has had; the ones without a type are refused when a tensor uses them.
constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", SrcType::F32},
    {"HalfStorage", SrcType::F16},
    {"BFloat16Storage", SrcType::BF16},
    {"DoubleStorage", SrcType::F64},
    {"LongStorage", SrcType::I64},
    {"IntStorage", SrcType::I32},
    {"ShortStorage", SrcType::I16},
    {"CharStorage", SrcType::I8},
    {"ByteStorage", SrcType::U8},
    {"BoolStorage", SrcType::Bool},
    {"ComplexFloatStorage", {}},
    {"ComplexDoubleStorage", {}},
    {"QInt8Storage", {}},
    {"QUInt8Storage", {}},
    {"QInt32Storage", {}},
    {"QUInt4x2Storage", {}},
    {"QUInt2x4Storage", {}},
};

const StorageType* find_storage_type(const std::string& name) {
  for (const auto& st : kStorageTypes)
    if (name == st.name) return &st;
  return nullptr;
}

struct StorageRec {
  std::string key;
  std::string type_name;  // "torch.FloatStorage"
  std::optional<SrcType> type;
  std::int64_t numel = 0;
  // Legacy storage views: a window of another storage.
  std::optional<std::size_t> base;
  std::int64_t base_offset = 0;
  const std::uint8_t* data = nullptr;  // resolved once the data location is known
};

struct TensorSpec {
  std::size_t storage = 0;
  std::int64_t offset = 0;
  std::vector<std::int64_t> size, stride;
};

// Turns the pickle's storages and _rebuild_tensor_v2 calls into records, then into tensors.
class TorchLoader {
 public:
  /// `views`: contiguous tensors may view the mapping (zip: data is 64-byte aligned). The legacy
  /// format packs storages back to back at arbitrary offsets, so there every tensor is copied,
  /// and the mapping is released once loading is done.
  TorchLoader(std::shared_ptr<detail::MappedFile> file, bool views) : file_(std::move(file)), views_(views) {
    hooks_.allow_global = [](const std::string& m, const std::string& n) {
      if (m == "collections" && n == "OrderedDict") return true;
      if (m == "torch._utils" && (n == "_rebuild_tensor_v2" || n == "_rebuild_parameter")) return true;
      return m == "torch" && find_storage_type(n) != nullptr;
    };
    hooks_.reduce = [this](const PyValue& fn, const PyValue& args) { return reduce(fn, args); };
    hooks_.persistent_load = [this](const PyValue& pid) { return persistent_load(pid); };
  }

  const detail::UnpicklerHooks& hooks() const { return hooks_; }
  std::vector<StorageRec>& storages() { return storages_; }
  StorageRec* find_storage(const std::string& key) {
    const auto it = by_key_.find(key);
    return it == by_key_.end() ? nullptr : &storages_[it->second];
  }
  [[noreturn]] void fail(const std::string& why) const { throw FormatError(file_->name(), why); }

  /// The name -> tensor dict inside the unpickled object.
  NamedTensors collect(const PyPtr& root) const;

 private:
  PyPtr reduce(const PyValue& fn, const PyValue& args);
  PyPtr persistent_load(const PyValue& pid);
  Tensor build(const std::string& name, const TensorSpec& spec) const;
  static bool is_state_dict(const PyValue& v) {
    if (v.kind != PyKind::Dict) return false;
    for (const auto& [k, t] : v.entries)
      if (!k->is_str() || !t->is_object("tensor")) return false;
    return true;
  }

  std::shared_ptr<detail::MappedFile> file_;
  bool views_;
  detail::UnpicklerHooks hooks_;
  std::vector<StorageRec> storages_;
  std::unordered_map<std::string, std::size_t> by_key_;
  std::vector<TensorSpec> tensors_;
};

std::int64_t as_int(const TorchLoader& l, const PyValue& v, const char* what) {
  if (v.kind != PyKind::Int) l.fail(std::string(what) + " should be an int, got " + detail::describe(v));
  return v.i;
}

std::vector<std::int64_t> as_int_tuple(const TorchLoader& l, const PyValue& v, const char* what) {
  if (v.kind != PyKind::Tuple) l.fail(std::string(what) + " should be a tuple, got " + detail::describe(v));
  std::vector<std::int64_t> out;
  for (const auto& it : v.items) out.push_back(as_int(l, *it, what));
  return out;
}

PyPtr TorchLoader::reduce(const PyValue& fn, const PyValue& args) {
  const std::string q = fn.qualified_name();
  if (q == "collections.OrderedDict") {
    if (!args.items.empty()) fail("OrderedDict called with arguments (" + detail::describe(args) + ")");
    return detail::make_dict();
  }
  if (q == "torch._utils._rebuild_tensor_v2") {
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if (args.items.size() != 6 && args.items.size() != 7)
      fail("_rebuild_tensor_v2 expects 6 or 7 arguments, got " + std::to_string(args.items.size()));
    const PyValue& st = *args.items[0];
    if (!st.is_object("storage"))
      fail("_rebuild_tensor_v2: first argument is " + detail::describe(st) + ", not a storage");
    TensorSpec spec;
    spec.storage = static_cast<std::size_t>(st.i);
    spec.offset = as_int(*this, *args.items[1], "storage_offset");
    spec.size = as_int_tuple(*this, *args.items[2], "tensor size");
    spec.stride = as_int_tuple(*this, *args.items[3], "tensor stride");
    if (spec.size.size() != spec.stride.size())
      fail("tensor size has " + std::to_string(spec.size.size()) + " dimensions but stride has " +
           std::to_string(spec.stride.size()));
    tensors_.push_back(std::move(spec));
    return detail::make_object("tensor", static_cast<std::int64_t>(tensors_.size() - 1));
  }
  if (q == "torch._utils._rebuild_parameter") {
    // (data, requires_grad, backward_hooks): the parameter is just its data here.
    if (args.items.size() != 3)
      fail("_rebuild_parameter expects 3 arguments, got " + std::to_string(args.items.size()));
    if (!args.items[0]->is_object("tensor"))
      fail("_rebuild_parameter of " + detail::describe(*args.items[0]));
    return detail::make_object("tensor", args.items[0]->i);
  }
  fail("the pickle calls " + q + ", which cannot build anything in a state dict");
}

PyPtr TorchLoader::persistent_load(const PyValue& pid) {
  // ('storage', torch.XStorage, key, location, numel[, view_metadata])
  if (pid.kind != PyKind::Tuple || pid.items.size() < 5 || pid.items.size() > 6 || !pid.items[0]->is_str() ||
      pid.items[0]->str != "storage")
    fail("unexpected persistent id " + detail::describe(pid) +
         " (expected ('storage', type, key, location, numel))");
  const PyValue& type = *pid.items[1];
  if (type.kind != PyKind::Global || type.str != "torch" || !find_storage_type(type.name))
    fail("persistent id names " + detail::describe(type) + ", not a torch storage class");
  const PyValue& key_v = *pid.items[2];
  std::string key;
  if (key_v.is_str())
    key = key_v.str;
  else if (key_v.is_int())
    key = std::to_string(key_v.i);
  else
    fail("storage key is " + detail::describe(key_v));
  if (!pid.items[3]->is_str()) fail("storage location is " + detail::describe(*pid.items[3]));
  const std::int64_t numel = as_int(*this, *pid.items[4], "storage size");
  if (numel < 0) fail("storage '" + key + "' has negative size " + std::to_string(numel));

  const StorageType* st = find_storage_type(type.name);
  std::size_t idx;
  if (const auto it = by_key_.find(key); it != by_key_.end()) {
    idx = it->second;
    const StorageRec& r = storages_[idx];
    if (r.base || r.type_name != type.qualified_name() || r.numel != numel)
      fail("storage '" + key + "' is described twice differently");
  } else {
    StorageRec r;
    r.key = key;
    r.type_name = type.qualified_name();
    r.type = st->type;
    r.numel = numel;
    idx = storages_.size();
    storages_.push_back(std::move(r));
    by_key_.emplace(key, idx);
  }
  if (pid.items.size() == 6 && pid.items[5]->kind != PyKind::None) {
    // Legacy storage view: (view_key, offset, size) in elements of the root storage.
    const PyValue& vm = *pid.items[5];
    if (!vm.is_tuple() || vm.items.size() != 3 || !vm.items[0]->is_str())
      fail("storage view metadata is " + detail::describe(vm));
    const std::string& vkey = vm.items[0]->str;
    const std::int64_t off = as_int(*this, *vm.items[1], "storage view offset");
    const std::int64_t n = as_int(*this, *vm.items[2], "storage view size");
    if (off < 0 || n < 0 || off > numel || n > numel - off)
      fail("storage view '" + vkey + "' [" + std::to_string(off) + ", +" + std::to_string(n) +
           ") lies outside storage '" + key + "' of " + std::to_string(numel) + " elements");
    if (const auto it = by_key_.find(vkey); it != by_key_.end()) {
      const StorageRec& v = storages_[it->second];
      if (!v.base || *v.base != idx || v.base_offset != off || v.numel != n)
        fail("storage view '" + vkey + "' is described twice differently");
      return detail::make_object("storage", static_cast<std::int64_t>(it->second));
    }
    StorageRec v = storages_[idx];
    v.key = vkey;
    v.base = idx;
    v.base_offset = off;
    v.numel = n;
    storages_.push_back(std::move(v));
    by_key_.emplace(vkey, storages_.size() - 1);
    return detail::make_object("storage", static_cast<std::int64_t>(storages_.size() - 1));
  }
  return detail::make_object("storage", static_cast<std::int64_t>(idx));
}

Tensor TorchLoader::build(const std::string& name, const TensorSpec& spec) const {
  const StorageRec& s = storages_[spec.storage];
  auto bad = [&](const std::string& why) { fail("tensor '" + name + "': " + why); };
  if (!s.type)
    bad("storage type " + s.type_name +
        " is not supported (float, half, bfloat16, double and integer storages are)");
  const SrcType type = *s.type;
  const std::uint8_t* data = s.data;
  if (s.base) data = storages_[*s.base].data;
  if (!data && s.numel > 0) bad("storage '" + s.key + "' has no data in the file");
  // (A view of a storage with no data stays without data: no arithmetic on a null pointer.)
  if (s.base && data) data += static_cast<std::size_t>(s.base_offset) * detail::src_type_size(type);

  if (spec.size.size() > static_cast<std::size_t>(Shape::kMaxRank))
    bad("rank " + std::to_string(spec.size.size()) + " exceeds the maximum of 8");
  if (spec.offset < 0) bad("negative storage offset " + std::to_string(spec.offset));
  for (std::size_t d = 0; d < spec.size.size(); ++d)
    if (spec.size[d] < 0) bad("negative size or stride in dimension " + std::to_string(d));
  Shape shape;
  try {
    shape = Shape(std::span<const std::int64_t>(spec.size));  // bounds every product of sizes
  } catch (const ShapeError& e) {
    bad("element count overflows: " + e.why());
  }
  std::int64_t numel = 1, last = spec.offset;
  for (std::size_t d = 0; d < spec.size.size(); ++d) {
    if (spec.size[d] < 0 || spec.stride[d] < 0)
      bad("negative size or stride in dimension " + std::to_string(d));
    if (!detail::checked_mul(numel, spec.size[d], numel)) bad("element count overflows");
    std::int64_t reach = 0;
    if (spec.size[d] > 0 && (!detail::checked_mul(spec.size[d] - 1, spec.stride[d], reach) ||
                             !detail::checked_add(last, reach, last)))
      bad("extent overflows");
  }
  const std::string extent =
      "elements [" + std::to_string(spec.offset) + ", " + std::to_string(last + 1) + ")";
  if (numel > 0 && last >= s.numel)
    bad(extent + " run past the end of storage '" + s.key + "' (" + std::to_string(s.numel) + " elements)");
  if (numel == 0 && spec.offset > s.numel) bad("storage offset past the end of storage '" + s.key + "'");

  const std::size_t es = detail::src_type_size(type);
  const std::uint8_t* first = data ? data + static_cast<std::size_t>(spec.offset) * es : nullptr;
  bool contiguous = true;
  for (std::int64_t d = static_cast<std::int64_t>(spec.size.size()) - 1, expect = 1; d >= 0; --d) {
    const auto du = static_cast<std::size_t>(d);
    if (spec.size[du] != 1 && spec.stride[du] != expect) contiguous = false;
    expect *= spec.size[du];
  }
  // A view of the mapping when the bytes already are the tensor; a dense copy otherwise
  // (strided, converted, from a legacy file, or not aligned for its element type).
  if (numel == 0) return Tensor::empty(shape, detail::loaded_dtype(type));
  if (views_ && contiguous && detail::is_native(type) && reinterpret_cast<std::uintptr_t>(first) % es == 0)
    return Tensor::view_of(const_cast<std::uint8_t*>(first), shape, detail::loaded_dtype(type),
                           Layout::Contiguous, Device::cpu(), file_);
  Tensor t = Tensor::empty(shape, detail::loaded_dtype(type));
  detail::gather_strided(first, type, spec.size, spec.stride, t.raw());
  return t;
}

NamedTensors TorchLoader::collect(const PyPtr& root) const {
  const PyValue* dict = nullptr;
  if (is_state_dict(*root)) {
    dict = root.get();
  } else if (root->kind == PyKind::Dict) {
    // Training checkpoints sometimes wrap the weights: {"state_dict": {...}, "epoch": ...}.
    for (const char* wrapper : {"state_dict", "model", "ema"}) {
      const PyValue* inner = root->find(wrapper);
      if (inner && is_state_dict(*inner)) {
        dict = inner;
        break;
      }
    }
    if (!dict) {
      for (const auto& [k, v] : root->entries) {
        if (!k->is_str()) fail("state dict key is " + detail::describe(*k) + ", not a string");
        if (!v->is_object("tensor"))
          fail("state dict entry '" + k->str + "' is " + detail::describe(*v) + ", not a tensor");
      }
    }
  }
  if (!dict) fail("the checkpoint holds " + detail::describe(*root) + ", not a state dict of tensors");
  NamedTensors out;
  for (const auto& [k, v] : dict->entries)
    out.set(k->str, build(k->str, tensors_[static_cast<std::size_t>(v->i)]));
  return out;
}

NamedTensors load_zip(const std::shared_ptr<detail::MappedFile>& file) {
  detail::ZipReader zip(file);
  TorchLoader loader(file, true);
  // One top folder of any name holds data.pkl, data/<key>, version and maybe byteorder.
  const detail::ZipEntry* pkl = nullptr;
  std::string prefix;
  for (const auto& e : zip.entries()) {
    const auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      if (pkl) loader.fail("the archive holds two data.pkl entries ('" + pkl->name + "', '" + e.name + "')");
      pkl = &e;
      prefix = e.name.substr(0, slash + 1);
    }
  }
  if (!pkl) loader.fail("the zip archive has no <folder>/data.pkl entry: not a PyTorch checkpoint");
  if (const auto* bo = zip.find(prefix + "byteorder")) {
    const auto b = zip.bytes(*bo);
    if (std::string(b.begin(), b.end()) != "little")
      throw UnsupportedError(file->name(), "the checkpoint's byte order is '" +
                                               std::string(b.begin(), b.end()) +
                                               "'; only little-endian files are supported");
  }
  const auto [root, end] =
      detail::unpickle(zip.bytes(*pkl), 0, loader.hooks(), file->name() + " (" + pkl->name + ")");
  if (end != pkl->size)
    loader.fail(pkl->name + " has " + std::to_string(pkl->size - end) + " bytes after STOP");
  for (auto& s : loader.storages()) {
    if (s.base) continue;
    const detail::ZipEntry* e = zip.find(prefix + "data/" + s.key);
    if (!e) loader.fail("storage '" + s.key + "' has no entry " + prefix + "data/" + s.key);
    if (!s.type) continue;  // refused when a tensor uses it
    std::int64_t need = 0;
    if (!detail::checked_mul(s.numel, static_cast<std::int64_t>(detail::src_type_size(*s.type)), need) ||
        static_cast<std::uint64_t>(need) > e->size)
      loader.fail("storage '" + s.key + "' claims " + std::to_string(s.numel) +
                  " elements but its entry holds " + std::to_string(e->size) + " bytes");
    s.data = zip.bytes(*e).data();
  }
  return loader.collect(root);
}

NamedTensors load_legacy(const std::shared_ptr<detail::MappedFile>& file) {
  TorchLoader loader(file, false);
  const std::span<const std::uint8_t> bytes(file->data(), file->size());
  detail::UnpicklerHooks plain;  // the header pickles need no globals
  plain.allow_global = [](const std::string&, const std::string&) { return false; };
  plain.reduce = [](const PyValue&, const PyValue&) -> PyPtr { return nullptr; };

  if (bytes.size() < kLegacyMagicPickle.size() ||
      std::memcmp(bytes.data(), kLegacyMagicPickle.data(), kLegacyMagicPickle.size()) != 0)
    loader.fail("not a legacy PyTorch checkpoint (bad magic number)");
  std::size_t pos = detail::unpickle(bytes, 0, plain, file->name()).second;
  const auto [proto, p1] = detail::unpickle(bytes, pos, plain, file->name());
  if (!proto->is_int() || proto->i != kLegacyProtocol)
    loader.fail("legacy protocol version is " + detail::describe(*proto) + ", expected 1001");
  const auto [sys, p2] = detail::unpickle(bytes, p1, plain, file->name());
  if (sys->kind != PyKind::Dict) loader.fail("legacy system info is " + detail::describe(*sys));
  const PyValue* le = sys->find("little_endian");
  if (!le || le->kind != PyKind::Bool || !le->b)
    throw UnsupportedError(file->name(), "the checkpoint was not written on a little-endian machine");

  const auto [root, p3] = detail::unpickle(bytes, p2, loader.hooks(), file->name());
  const auto [keys, p4] = detail::unpickle(bytes, p3, plain, file->name());
  if (keys->kind != PyKind::List) loader.fail("legacy storage key list is " + detail::describe(*keys));
  // Then, for each key in order: int64 element count, raw data (no alignment).
  pos = p4;
  for (const auto& k : keys->items) {
    if (!k->is_str()) loader.fail("legacy storage key is " + detail::describe(*k));
    StorageRec* s = loader.find_storage(k->str);
    if (!s || s->base) loader.fail("storage key '" + k->str + "' is listed but no tensor uses it");
    if (s->data) loader.fail("storage key '" + k->str + "' is listed twice");
    if (!s->type)
      throw FormatError(file->name(), "storage '" + s->key + "' has the unsupported type " + s->type_name);
    if (bytes.size() - pos < 8) loader.fail("truncated before the data of storage '" + k->str + "'");
    const std::int64_t count = detail::load_le<std::int64_t>(bytes.data() + pos);
    pos += 8;
    if (count != s->numel)
      loader.fail("storage '" + k->str + "' holds " + std::to_string(count) + " elements, the pickle says " +
                  std::to_string(s->numel));
    std::int64_t need = 0;
    if (!detail::checked_mul(count, static_cast<std::int64_t>(detail::src_type_size(*s->type)), need) ||
        static_cast<std::uint64_t>(need) > bytes.size() - pos)
      loader.fail("storage '" + k->str + "' (" + std::to_string(count) +
                  " elements) runs past the end of the file");
    s->data = bytes.data() + pos;
    pos += static_cast<std::size_t>(need);
  }
  if (pos != bytes.size())
    loader.fail(std::to_string(bytes.size() - pos) + " unexpected bytes after the last storage");
  return loader.collect(root);
}

}  // namespace

const char* weights_format_name(WeightsFormat f) noexcept {
  switch (f) {
    case WeightsFormat::Safetensors: return "safetensors";
    case WeightsFormat::TorchZip: return "torch zip";
    case WeightsFormat::TorchLegacy: return "torch legacy";
    case WeightsFormat::Unknown: return "unknown";
  }
  return "unknown";
}

WeightsFormat detect_weights_format(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) throw IoError(path.string(), "no such file");
  if (!std::filesystem::is_regular_file(status)) throw IoError(path.string(), "not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path.string(), "cannot open for reading");
  std::array<std::uint8_t, 16> head{};
  in.read(reinterpret_cast<char*>(head.data()), head.size());
  const auto got = static_cast<std::size_t>(in.gcount());
  const std::uint64_t size = std::filesystem::file_size(path, ec);
  if (got >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4)
    return WeightsFormat::TorchZip;
  if (got >= kLegacyMagicPickle.size() &&
      std::equal(kLegacyMagicPickle.begin(), kLegacyMagicPickle.end(), head.begin()))
    return WeightsFormat::TorchLegacy;
  if (got >= 9 && head[8] == '{') {
    const std::uint64_t n = detail::load_le<std::uint64_t>(head.data());
    if (!ec && n >= 2 && n <= size - 8) return WeightsFormat::Safetensors;
  }
  return WeightsFormat::Unknown;
}

NamedTensors load_torch_checkpoint(const std::filesystem::path& path, FileAccess access) {
  const auto file = detail::MappedFile::open(path, access);
  const std::uint8_t* d = file->data();
  const std::size_t n = file->size();
  if (n == 0) throw FormatError(file->name(), "the file is empty");
  if (n >= 4 && d[0] == 'P' && d[1] == 'K' && d[2] == 3 && d[3] == 4) return load_zip(file);
  if (n >= 2 && d[0] == 0x80) return load_legacy(file);
  throw FormatError(file->name(), "not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)");
}

NamedTensors load_weights(const std::filesystem::path& path, FileAccess access) {
  switch (detect_weights_format(path)) {
    case WeightsFormat::Safetensors: return load_safetensors(path, access);
    case WeightsFormat::TorchZip:
    case WeightsFormat::TorchLegacy: return load_torch_checkpoint(path, access);
    case WeightsFormat::Unknown: break;
  }
  throw FormatError(path.string(),
                    "unrecognised weights file: expected safetensors, a PyTorch zip checkpoint or a "
                    "legacy PyTorch checkpoint");
}

}  // namespace diffprobe::io
