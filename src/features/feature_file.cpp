// Complete feature files: save_features, and FeatureFile (one file, or the parts of a sharded
// extraction read as one). Metadata: feature_metadata.cpp; resumable writing: feature_writer.cpp.
#include "diffprobe/features/feature_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "core/text.hpp"
#include "diffprobe/io/npy.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "features/feature_file_common.hpp"
#include "features/parts_check.hpp"
#include "io/atomic_file.hpp"
#include "io/safetensors_writer.hpp"

namespace diffprobe {
namespace fs = std::filesystem;
namespace {

using detail::check_for_save;
using detail::CheckedTensors;
using detail::list_names;

void save_checked(const fs::path& path, const CheckedTensors& c, const FeatureMetadata& metadata,
                  DType store) {
  if (!is_floating(store))
    throw ArgumentError("save_features",
                        "features can be stored as f32, f16 or bf16, not " + std::string(dtype_name(store)));
  FeatureMetadata meta = metadata;
  if (meta.library.empty()) meta.library = detail::library_string();
  const auto strings = meta.to_strings();
  std::vector<io::detail::SafetensorsEntry> entries;
  for (const auto& [name, t] : c.items)
    entries.push_back({name, name == "labels" ? DType::I64 : store, t.shape().vec()});
  io::detail::write_safetensors(path, strings, entries, [&](std::size_t i, io::detail::AtomicFile& f) {
    const Tensor t = io::detail::stored_copy(c.items[i].second, entries[i].dtype);
    f.write(t.raw(), t.nbytes());
  });
}

}  // namespace

void save_features(const fs::path& path, const FeatureSet& features, const std::optional<Tensor>& labels,
                   const FeatureMetadata& metadata, DType store) {
  std::vector<std::pair<std::string, Tensor>> items;
  for (const auto& [key, t] : features.items()) items.push_back({feature_name(key.first, key.second), t});
  if (labels) items.push_back({"labels", *labels});
  save_checked(path, check_for_save(items, "save_features"), metadata, store);
}

void save_features(const fs::path& path, const io::NamedTensors& tensors, const FeatureMetadata& metadata,
                   DType store) {
  std::vector<std::pair<std::string, Tensor>> items(tensors.begin(), tensors.end());
  save_checked(path, check_for_save(items, "save_features"), metadata, store);
}

// ---- FeatureFile ----------------------------------------------------------------------------

FeatureFile FeatureFile::open(const fs::path& path) {
  const std::string where = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IoError(where, "no such feature file");
  FeatureFile f;
  f.path_ = path;
  f.tensors_ = io::load_safetensors(path);
  f.metadata_ = FeatureMetadata::from_strings(f.tensors_.metadata, where);
  const std::set<int> ts(f.metadata_.timesteps.begin(), f.metadata_.timesteps.end());
  const std::set<int> bs(f.metadata_.blocks.begin(), f.metadata_.blocks.end());
  std::int64_t n = -1;
  auto check_n = [&](const std::string& name, const Tensor& t) {
    if (t.rank() < 1) throw FormatError(where, "tensor '" + name + "' has no sample dimension");
    if (n < 0) n = t.dim(0);
    if (t.dim(0) != n)
      throw FormatError(where, "tensor '" + name + "' has " + std::to_string(t.dim(0)) + " samples, others " +
                                   std::to_string(n));
  };
  for (const auto& [name, t] : f.tensors_) {
    if (name == "labels") {
      if (t.dtype() != DType::I64 && t.dtype() != DType::I32)
        throw FormatError(where,
                          "labels must be integer, the file has " + std::string(dtype_name(t.dtype())));
      if (t.rank() != 1) throw FormatError(where, "labels must be [N], the file has " + t.shape().str());
      check_n(name, t);
      f.labels_ = t.dtype() == DType::I64 ? t : t.to_dtype(DType::I64);
      continue;
    }
    std::pair<int, int> tb;
    try {
      tb = parse_feature_name(name);
    } catch (const ArgumentError&) {
      throw FormatError(where, "tensor '" + name + "' is neither a feature 't{T}.b{B}' nor 'labels'");
    }
    if (!is_floating(t.dtype()))
      throw FormatError(where, "feature '" + name + "' must be floating, the file has " +
                                   std::string(dtype_name(t.dtype())));
    if ((!ts.empty() && !ts.count(tb.first)) || (!bs.empty() && !bs.count(tb.second)))
      throw FormatError(where, "feature '" + name + "' is not among the metadata's timesteps (" +
                                   detail::join(f.metadata_.timesteps) + ") and blocks (" +
                                   detail::join(f.metadata_.blocks) + ")");
    check_n(name, t);
    f.names_.push_back(name);
  }
  if (f.names_.empty()) throw FormatError(where, "the feature file holds no features");
  // A shard's part (extraction_job.hpp) holds any run of rows; the whole output holds copies x N.
  if (!f.metadata_.extra.count("part.rows") && n % f.metadata_.copies != 0)
    throw FormatError(where, fmt::format("{} rows are not {} copies of the same samples (metadata 'copies')",
                                         n, f.metadata_.copies));
  for (const auto& k : f.metadata_.skipped_rows)
    if (k.row >= n)
      throw FormatError(where,
                        fmt::format("metadata 'skipped_rows' lists row {} of a file of {} rows", k.row, n));
  f.n_ = n;
  return f;
}

namespace detail {

std::map<std::string, std::string> check_parts(const std::vector<FeatureFile>& parts,
                                               const std::vector<fs::path>& paths) {
  auto part_key = [&](std::size_t i, const char* key) {
    const auto& extra = parts[i].metadata().extra;
    const auto it = extra.find(key);
    if (it == extra.end())
      throw FormatError(paths[i].string(),
                        std::string("not a part of a sharded extraction (no metadata '") + key + "')");
    return it->second;
  };
  auto without_parts = [](std::map<std::string, std::string> m) {
    for (auto it = m.begin(); it != m.end();) it = it->first.rfind("part.", 0) == 0 ? m.erase(it) : ++it;
    return m;
  };
  const auto base = without_parts(parts[0].metadata().to_strings());
  std::int64_t next = 0;
  const std::string total = part_key(0, "part.total_rows");
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string shard = fmt::format("{}/{}", i, parts.size());
    if (part_key(i, "part.shard") != shard)
      throw FormatError(paths[i].string(), "is part " + part_key(i, "part.shard") + ", expected " + shard +
                                               " (give every part, in shard order)");
    if (part_key(i, "part.rows") != fmt::format("{},{}", next, next + parts[i].size()) ||
        part_key(i, "part.total_rows") != total)
      throw FormatError(paths[i].string(),
                        "its rows " + part_key(i, "part.rows") + " do not follow the previous part's");
    next += parts[i].size();
    if (without_parts(parts[i].metadata().to_strings()) != base)
      throw FormatError(paths[i].string(), "is a part of another extraction than " + paths[0].string());
    if (parts[i].names() != parts[0].names())
      throw FormatError(paths[i].string(), "holds other features than part 0");
  }
  if (std::to_string(next) != total)
    throw FormatError("FeatureFile::open_parts", fmt::format("the parts hold {} of {} rows", next, total));
  return base;
}

}  // namespace detail

FeatureFile FeatureFile::open_parts(const std::vector<fs::path>& paths) {
  const char* where = "FeatureFile::open_parts";
  if (paths.empty()) throw ArgumentError(where, "no parts given");
  std::vector<FeatureFile> parts;
  for (const auto& p : paths) parts.push_back(open(p));
  const auto base = detail::check_parts(parts, paths);
  std::int64_t next = 0;
  for (const auto& p : parts) next += p.size();
  io::NamedTensors all;
  all.metadata = base;
  for (const auto& [name, t0] : parts[0].tensors_) {
    auto shape = t0.shape().vec();
    shape[0] = next;
    Tensor t = Tensor::empty(Shape(shape), t0.dtype());
    std::int64_t row = 0;
    const std::size_t row_bytes =
        t0.nbytes() / static_cast<std::size_t>(std::max<std::int64_t>(1, t0.dim(0)));
    for (const auto& p : parts) {
      const Tensor& s = p.tensors_.at(name);
      std::memcpy(static_cast<char*>(t.raw()) + static_cast<std::size_t>(row) * row_bytes, s.raw(),
                  s.nbytes());
      row += s.dim(0);
    }
    all.set(name, std::move(t));
  }
  FeatureFile f;
  f.path_ = paths[0];
  f.tensors_ = std::move(all);
  f.metadata_ = FeatureMetadata::from_strings(f.tensors_.metadata, where);
  f.names_ = parts[0].names_;
  if (parts[0].labels_) f.labels_ = f.tensors_.at("labels");
  f.n_ = next;
  return f;
}

bool FeatureFile::contains(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

const Tensor& FeatureFile::feature(const std::string& name) const {
  if (!contains(name))
    throw ArgumentError("FeatureFile::feature", "no feature '" + name + "' in " + path_.string() +
                                                    " (available: " + list_names(names_) + ")");
  return tensors_.at(name);
}

FeatureSet FeatureFile::features() const {
  FeatureSet s;
  for (const auto& n : names_) {
    const auto [t, b] = parse_feature_name(n);
    s.set(t, b, tensors_.at(n));
  }
  return s;
}

std::optional<Tensor> FeatureFile::labels() const { return labels_; }

void FeatureFile::export_npy(const std::string& name, const fs::path& out) const {
  if (name == "labels") {
    if (!labels_) throw ArgumentError("FeatureFile::export_npy", path_.string() + " has no labels");
    io::save_npy(out, *labels_);
    return;
  }
  const Tensor& t = feature(name);
  io::save_npy(out, t.dtype() == DType::BF16 ? t.to_dtype(DType::F32) : t);
}

}  // namespace diffprobe
